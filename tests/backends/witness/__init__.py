"""Trace witness: a test backend that follows one request's trace through a call and two
events (hms.testing.v1.MirrorService's GetItem)."""
