"""Customers are dynamic partitions: adding one is a partition request, not a code change."""

import dagster as dg

customers = dg.DynamicPartitionsDefinition(name="customers")
