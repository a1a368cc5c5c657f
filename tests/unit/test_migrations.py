"""The hard-coded revision list agrees with Alembic's scripts."""

from alembic.config import Config
from alembic.script import ScriptDirectory

from pony_scheduler.store import migrate


def test_revisions_match_alembic() -> None:
    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS))
    script = ScriptDirectory.from_config(config)
    walked = [rev.revision for rev in script.walk_revisions()]
    assert tuple(reversed(walked)) == migrate.REVISIONS
    assert script.get_current_head() == migrate.HEAD
