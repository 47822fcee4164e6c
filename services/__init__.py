"""The reference services of the seed documents, one package each."""
