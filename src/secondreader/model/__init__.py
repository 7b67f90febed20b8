"""Model cards (MONAI bundle metadata), networks built from them, and predictors."""
