"""PHI: the values a source carries, their search terms and the matcher (a service of index, sidecar and release).

``annex`` (PHI-class attributes, Annex E) -> ``collect`` (header values) -> ``terms`` (search
terms in every supported spelling, with match modes; ``fold`` makes text and terms comparable)
-> ``matcher`` (one compiled search over many terms). ``accept`` keys reviewed exceptions
(``[audit] accept``); ``logmask`` masks identifying path parts in error and warning lines. The
names below are what the release stages and ``api`` use; the collection functions are
``packager.phi.collect.collect`` and ``collect_elements`` (``packager.phi.collect`` names the
module, so the function is not lifted here).
"""

from typing import TYPE_CHECKING

from packager.phi.accept import accept_hmac
from packager.phi.matcher import Matcher
from packager.phi.terms import PhiValue, is_generic, search_terms

# ``collect`` reads headers (pydicom, ~0.3 s to import): lifted on first use (PEP 562), so the CLI's
# log masking (``logmask``) does not bring pydicom into ``dcmpack --help`` and ``version``.
_COLLECT = ("DIRECT_IDENTIFIERS", "released", "without_public")
if TYPE_CHECKING:
    from packager.phi.collect import DIRECT_IDENTIFIERS, released, without_public


def __getattr__(name: str):
    if name in _COLLECT:
        from packager.phi import collect

        return getattr(collect, name)
    raise AttributeError(f"module 'packager.phi' has no attribute {name!r}")


__all__ = [
    "DIRECT_IDENTIFIERS",
    "Matcher",
    "PhiValue",
    "accept_hmac",
    "is_generic",
    "released",
    "search_terms",
    "without_public",
]
