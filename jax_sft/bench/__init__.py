"""Measurements that are figures, never pass/fail: throughput and MFU, the sparse study."""
