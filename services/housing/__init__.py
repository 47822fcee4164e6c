"""Housing: voucher applications, decided by eligibility, with pay stubs from documents."""
