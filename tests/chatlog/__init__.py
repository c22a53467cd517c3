"""A Django app of the test project whose hooks persist chat messages: the example of docs/hooks.md."""
