"""Networks fitted per ion image."""
