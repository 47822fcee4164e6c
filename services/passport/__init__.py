"""Passport: renewals of issued passports, checked with identity, eligibility and documents."""
