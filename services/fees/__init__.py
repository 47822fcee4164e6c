"""Fees: what each licence type costs."""
