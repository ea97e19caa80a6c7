"""Importers of published trajectory-data formats into lram task folders (paper or packed layout).

Each importer is resumable (episodes already in the destination are skipped), shows a progress bar and
names the source file and field in every :class:`~lram.data.episode.DataError`:

* :func:`import_robomimic`  robomimic/MimicGen HDF5 (``data/demo_<i>/...``), :mod:`.robomimic`
* :func:`import_composuite` CompoSuite (Dryad) D4RL-style HDF5, :mod:`.composuite`
* :func:`import_dqn_replay` DQN-Replay Atari checkpoints (``$store$_*_ckpt.<k>.gz``), :mod:`.dqn_replay`
* :func:`import_minari`     Minari datasets on local disk, :mod:`.minari_import`

All return ``{task name: {"written": n, "skipped": m, "task": Path}}``.
"""

from lram.data.importers.composuite import import_composuite
from lram.data.importers.dqn_replay import import_dqn_replay
from lram.data.importers.minari_import import import_minari
from lram.data.importers.robomimic import import_robomimic

FORMATS = {
    "robomimic": import_robomimic,
    "mimicgen": import_robomimic,
    "composuite": import_composuite,
    "dqn-replay": import_dqn_replay,
    "minari": import_minari,
}

__all__ = ["import_robomimic", "import_composuite", "import_dqn_replay", "import_minari", "FORMATS"]
