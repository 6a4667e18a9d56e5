"""The queue core: messages, filters, retry policy, errors, the backend protocol and the
broker that holds the policy. Standard library only; no I/O of its own."""
