"""Notify: sends notifications to applicants and keeps a record of them."""
