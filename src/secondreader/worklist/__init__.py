"""The second-review worklist: states, routing rules, first reads and radiologists' verdicts."""

from .routing import RoutingRules, load_rules
from .states import State
from .worklist import FIRST_READ_VERDICT, VERDICTS, Worklist

__all__ = ["FIRST_READ_VERDICT", "VERDICTS", "RoutingRules", "State", "Worklist", "load_rules"]
