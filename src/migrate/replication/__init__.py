"""Change capture and apply: logical decoding of one database applied to another, and the freeze.

Below the steps, beside ``checks`` and ``control``; nothing here knows tenants,
playbooks or the control schema beyond what its callers pass in, so the same
machinery runs forward (a tenant's source → the shared schema, ``tenant_id``
added) and, later, back (the shared schema → the old database):

- ``pgoutput``: a pure decoder of the plugin's messages (protocol 1);
- ``changes``: the net effect of a batch per table and key (pure);
- ``apply``: that effect written in the caller's transaction;
- ``slots``: publications, slots with an exported snapshot, peek, advance, fence;
- ``stream``: one poll = peek → fold → apply + progress in one transaction → advance;
- ``freeze``: application roles lose write access, a lock barrier waits out writes under way;
- ``checks``: what a database must offer before any of it starts.
"""
