"""The BentoML service, for ``bentoml build`` / ``bentoml serve serving.service:SecondReader``.

The class lives in the package (``secondreader.service.bento``) so that ``secondreader serve``
works from an installed package too; this file only points at it.
"""

from secondreader.service.bento import SecondReader

__all__ = ["SecondReader"]
