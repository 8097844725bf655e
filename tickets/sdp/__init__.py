"""Everything the product knows about ManageEngine ServiceDesk Plus (facts: docs/servicedesk-api.md).

- `client`: the HTTP client for API v3, its endpoints (`ServiceDeskClient`; re-exports the names below).
- `transport`: how a call goes out and what SDP's answer means (timeouts, bounded retries, the envelope).
- `errors`: `ServiceDeskError(permanent=...)`. `addresses`: which base URLs we call (`check_base_url`).
- `auth`: credentials, SDP Cloud (Zoho) token renewal and `servicedesk_client(tenant=...)`, the only
  place that builds a client for a tenant.
- `mapping`: SDP request objects -> Ticket fields, and SDP's epoch-millisecond times.
- `schema`: the inbound webhook payload (what we validate of a request object).
- `links`: the technician-facing URL of a request in the tenant's SDP.
"""
