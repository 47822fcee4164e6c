"""Eligibility: checks an applicant against the scheme's codified rules."""
