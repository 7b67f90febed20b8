"""The second-review worklist: states, routing rules, first reads and radiologists' verdicts."""

from .routing import RoutingRules, load_rules
from .states import State
from .worklist import VERDICTS, Worklist

__all__ = ["VERDICTS", "RoutingRules", "State", "Worklist", "load_rules"]
