"""Report: reports written from what other services know (the identity check report)."""
