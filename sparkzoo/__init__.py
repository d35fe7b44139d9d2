"""sparkzoo: distributed deep learning on Apache Spark (prepare -> train -> track -> score).

The subpackages ``sparkzoo.pipelines``, ``sparkzoo.models`` and ``sparkzoo.jobs`` live in the top-level
folders of the repository (see pyproject's package-dir) so the tree reads as docs/DEVELOPMENT.md draws its layout.
"""

__version__ = "0.1.0"
