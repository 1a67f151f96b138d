"""Hierarchical federated learning services (global aggregator, local aggregator, client)."""
