"""The three services: global aggregator, local aggregator, client."""
