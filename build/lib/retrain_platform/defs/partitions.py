"""Customers are dynamic partitions: adding one is a partition request, not a code change."""

import dagster as dg

customers = dg.DynamicPartitionsDefinition(name="customers")

# One partition per ingested batch, keyed "<customer>.<batch>": batches are per customer and do not form a
# customer x batch grid, and Dagster 1.13's warehouse IO managers fail on multi-partitions with a dynamic
# dimension (dagster issue 32631); these assets write through the warehouse resource instead.
batches = dg.DynamicPartitionsDefinition(name="batches")
