"""Language models that generate recommendations, re-rank them and explain them."""
