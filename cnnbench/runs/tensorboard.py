"""TensorBoard event files in the run directory (``tensorboard --logdir runs``).

Written with TensorFlow's raw summary op and the "scalars" plugin tag, so the ``tensorboard``
package itself is not needed to write them. TensorFlow comes through the pipeline's one door
(:mod:`cnnbench.pipeline.tfenv`), already loaded by the input pipeline when a run trains.
"""

from __future__ import annotations

from pathlib import Path

SCALARS = ("loss", "top1", "top5", "lr", "images_per_sec")


class TensorBoard:
    def __init__(self, logdir: Path):
        from cnnbench.pipeline.tfenv import tf

        self._tf = tf()
        from tensorflow.core.framework import summary_pb2

        self._meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        self._writer = self._tf.summary.create_file_writer(str(logdir))

    def write(self, record: dict) -> None:
        with self._writer.as_default():
            for key in SCALARS:
                if key in record:
                    self._tf.summary.write(f"{record['kind']}/{key}", self._tf.constant(record[key], "float32"),
                                           step=record["step"], metadata=self._meta)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()
