"""The comparison floor for bench/webhook.py: the least a durable Django webhook can do."""
