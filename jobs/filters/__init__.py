"""Sample and caption quality: the filter stage's chain and its filters, and caption-quality figures."""
