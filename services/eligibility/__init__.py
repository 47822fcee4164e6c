"""Eligibility: checks an applicant against the schemes' codified rules (housing, passport)."""
