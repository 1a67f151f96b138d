"""legacy-numpyclient: a Flower app written against the legacy client API."""
