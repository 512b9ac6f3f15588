"""What every PostgreSQL connection of the suite shares (a farm's metadata and journals)."""

from __future__ import annotations

import re

# A host that loses its power or its network mid-transaction leaves its sessions, and the
# locks they hold (a write's row and advisory locks, the farm's collection), to the server
# until it notices: the other hosts' writes wait meanwhile, against their deadline (10 s).
# Each session asks the server to end a transaction left idle for 3 s (ours last
# milliseconds) and to probe its TCP peer after 1 s of silence (gone after 2 unanswered
# probes, 1 s apart: the collection's lock, held by an idle session, is given back at most
# about 3 s after its host went); the client's own socket notices a lost server in about
# 25 s, not the default two hours.
CONNECT_ARGS = {
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
    "options": "-c idle_in_transaction_session_timeout=3s -c tcp_keepalives_idle=1 "
               "-c tcp_keepalives_interval=1 -c tcp_keepalives_count=2",
}


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg2://...``) as libpq takes it (``postgresql://``)."""
    return re.sub(r"^postgresql\+[A-Za-z0-9_]+://", "postgresql://", url)
