"""The fan-out core: the runtime, the hub, subscriptions, outboxes and the publish path."""
