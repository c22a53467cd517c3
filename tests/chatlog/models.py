from django.db import models


class ChatMessage(models.Model):
    """A chat message as a client sent it, kept by the on_publish hook of hooks.py."""

    channel_id = models.CharField(max_length=100)
    client_id = models.CharField(max_length=128)
    text = models.TextField()
    sent_at = models.DateTimeField(auto_now_add=True)

    def __str__(self):
        return f"{self.client_id}: {self.text}"
