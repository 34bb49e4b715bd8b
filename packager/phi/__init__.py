"""PHI: the values a source carries, their search terms and the matcher (a service of index, sidecar and release).

``annex`` (PHI-class attributes, Annex E) -> ``collect`` (header values) -> ``terms`` (search
terms in every supported spelling, with match modes; ``fold`` makes text and terms comparable)
-> ``matcher`` (one compiled search over many terms). ``accept`` keys reviewed exceptions
(``[audit] accept``); ``logmask`` masks identifying path parts in error and warning lines. The
names below are what the release stages and ``api`` use; the collection functions are
``packager.phi.collect.collect`` and ``collect_elements`` (``packager.phi.collect`` names the
module, so the function is not lifted here; it reads headers with pydicom, which ``--help``,
``version`` and a fully reused build never import).
"""

from packager.phi.accept import accept_hmac
from packager.phi.matcher import Matcher
from packager.phi.public import DIRECT_IDENTIFIERS, released, without_public
from packager.phi.terms import PhiValue, is_generic, search_terms

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
