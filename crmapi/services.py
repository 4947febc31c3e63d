"""The one wiring: every long-lived object of a process, built in one place and passed down.

The app, the CLI and the worker all start from `build_services(db)`; nothing is patched into an
object after it is made. The order breaks the one cycle (the catalog resolves custom slugs through
the custom objects, whose definitions the store writes): the built-in catalog is loaded first, the
custom objects are made from its internal table, and the full catalog is then made with them.
"""

from dataclasses import dataclass

from .accounts import Accounts
from .config import Settings
from .custom import CustomObjects
from .db import Database
from .history import History
from .schema import Catalog
from .store import Store
from .store import new_ids
from .store import utc_now


@dataclass(frozen=True)
class Services:
    db: Database
    settings: Settings
    catalog: Catalog  # resources by slug: the built-ins, and each organization's custom objects
    store: Store  # record operations and their transactions
    custom: CustomObjects  # custom object definitions
    accounts: Accounts  # organizations, users, tokens


def build_services(db, settings=None, clock=utc_now):
    """The services over one database (`settings`: default Settings.from_env())."""
    settings = settings or Settings.from_env()
    builtin = Catalog.load(db)
    changes = History(db, clock, new_ids)
    custom = CustomObjects(db, builtin.internal['custom_objects'], changes, clock)
    catalog = Catalog(builtin.tables, builtin.internal, custom)
    store = Store(db, catalog, clock, changes)
    return Services(db, settings, catalog, store, custom, Accounts(db, clock))
