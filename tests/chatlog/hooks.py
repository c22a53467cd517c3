from channels_app import hooks

from .models import ChatMessage


@hooks.on_publish(channels=["chat-*"])
def archive(event):
    """Refuse empty chat messages; keep the others, trimmed, and publish them trimmed."""
    text = event.payload.strip()
    if not text:
        raise hooks.Reject(code=4422, reason="Empty messages are not sent.")
    ChatMessage.objects.create(channel_id=event.channel.id, client_id=event.client_id, text=text)
    return text
