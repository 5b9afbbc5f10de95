"""Reading an upload's ``multipart/form-data`` body strictly, so a malformed form gets the right one line.

Werkzeug's form parser drops a form it cannot parse without saying why (the page then saw "no image"),
and answers a form of too many parts as if it were too large. :class:`UploadRequest` makes the reason
explicit: :class:`MalformedForm` (``400``: no boundary, a part's headers not UTF-8, a broken body) and
:class:`TooManyParts` (``413``: more than :data:`MAX_FORM_PARTS` parts or a text field over
:data:`MAX_FORM_FIELD_BYTES`), each a :class:`werkzeug.exceptions.HTTPException` whose ``description``
is the one line the page shows. :func:`bounded` keeps every error reply one short line.
"""

from __future__ import annotations

import re

from flask import Request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

#: a search form has two parts (``image`` and ``method``); a few more are tolerated
MAX_FORM_PARTS = 16
#: a text field (``method``) is a short name; Flask's default, since Werkzeug applies it to each 64 KiB read of
#: the body as well, file parts included (a smaller value would refuse ordinary uploads)
MAX_FORM_FIELD_BYTES = 500_000
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: an error reply is one line of at most this many characters (a long value the client sent is cut in the middle)
MAX_ERROR_CHARS = 400


def bounded(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``message`` as one line of at most ``limit`` characters: control characters become spaces, and a
    longer line keeps its start and its end (what to do) around ``...``."""
    line = " ".join(_UNPRINTABLE.sub(" ", str(message)).split())
    if len(line) <= limit:
        return line
    tail = limit // 3
    return f"{line[:limit - tail - 5]} ... {line[-tail:]}"


class MalformedForm(BadRequest):
    """A multipart body that cannot be parsed (``description``: why, and what to do)."""


class TooManyParts(RequestEntityTooLarge):
    """A multipart body of too many parts, or a text field that is too long (not: too many bytes)."""


class StrictFormParser(FormDataParser):
    """Werkzeug's parser, raising the reason a form cannot be read instead of returning an empty form."""

    def parse(self, stream, mimetype, content_length, options=None):
        self.silent = False
        try:
            return super().parse(stream, mimetype, content_length, options)
        except UnicodeDecodeError:
            raise MalformedForm("the upload could not be read: its file name is not UTF-8 text (a part's "
                                "headers must be); rename the file, then upload it again") from None
        except ValueError as exc:
            reason = " ".join(str(exc).split()) or "unreadable body"
            if reason == "Missing boundary":
                reason = "its Content-Type multipart/form-data names no boundary"
            raise MalformedForm(f"the upload is not a well-formed multipart form ({reason}): send the image "
                                "from the page, or as `curl -F image=@FILE`") from None
        except RequestEntityTooLarge:
            raise TooManyParts(f"the form has too many fields (more than {MAX_FORM_PARTS} parts) or a text field "
                               f"over {MAX_FORM_FIELD_BYTES // 1000} kB: send one image field and the method") from None


class UploadRequest(Request):
    """Flask's request with :class:`StrictFormParser` (the app sets ``MAX_FORM_PARTS`` and
    ``MAX_FORM_MEMORY_SIZE`` to the limits above)."""

    form_data_parser_class = StrictFormParser
