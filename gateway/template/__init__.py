"""Path templates of ``google.api.http``: parse (text -> tree) and match (tree -> bindings).

Example::

    >>> from hms_gateway.template import match, parse_template
    >>> match(parse_template("/v1/{name=shelves/*}:publish"), "/v1/shelves/s1:publish")
    {'name': 'shelves/s1'}
"""

from hms_gateway.template.match import BadPath, Matcher, compile_template, match
from hms_gateway.template.parse import (
    DeepWildcard,
    Literal,
    Segment,
    Template,
    TemplateError,
    Variable,
    Wildcard,
    parse_template,
)

__all__ = [
    "BadPath",
    "DeepWildcard",
    "Literal",
    "Matcher",
    "Segment",
    "Template",
    "TemplateError",
    "Variable",
    "Wildcard",
    "compile_template",
    "match",
    "parse_template",
]
