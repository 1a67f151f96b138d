"""tinyhfl: a tiny Flower app on scikit-learn's digits."""
