"""Webhooks to backends (docs/webhooks.md): events about rooms, members, users and messages,
POSTed in signed, ordered batches to the endpoints of ``HUB_WEBHOOK_URLS``.

:mod:`hub.webhooks.service` (the node's :class:`~hub.webhooks.service.Webhooks`),
:mod:`hub.webhooks.transitions` (cluster-wide occupied/vacated and joined/left),
:mod:`hub.webhooks.queues` (memory and Redis Stream queues), :mod:`hub.webhooks.dispatch`
(delivery, retries, metrics). Receivers verify with :func:`hubbub.webhooks.verify`.
"""
