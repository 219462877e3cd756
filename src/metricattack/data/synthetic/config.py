"""Configuration of the synthetic pedestrian generator."""

from __future__ import annotations

from pydantic import Field, model_validator

from ...config import StrictModel


class SynthConfig(StrictModel):
    """What to generate; every field changes the bytes written (``workers`` is not here).

    Counts are images unless named ``*_ids``. Each train identity gets
    ``images_per_camera`` images in each of its cameras; each test identity gets one
    query plus ``images_per_camera`` gallery images in each of its cameras.
    """

    seed: int = Field(0, ge=0, description="master seed; same seed and config give the same bytes")
    num_train_ids: int = Field(ge=1, description="identities in bounding_box_train/")
    num_test_ids: int = Field(ge=1, description="identities in query/ and bounding_box_test/")
    num_cameras: int = Field(6, ge=2, le=9, description="cameras c1..cN (Market-1501 names allow one digit)")
    images_per_camera: int = Field(4, ge=1, description="train/gallery images per identity per camera")
    cameras_per_id: int | None = Field(None, ge=2, description="cameras each identity is seen by (random subset); None = all cameras")
    height: int = Field(128, ge=16, le=1024, description="image height in pixels (Market-1501: 128)")
    width: int = Field(64, ge=8, le=512, description="image width in pixels (Market-1501: 64)")
    num_distractors: int = Field(0, ge=0, description="gallery images of unrelated people (pid 0)")
    num_junk: int = Field(0, ge=0, description="gallery junk images, background and body fragments (pid -1)")
    difficulty: float = Field(1.0, ge=0.0, le=2.0, description="scales camera changes (illumination, blur, occlusion, clutter); 0 = none")

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if self.cameras_per_id is not None and self.cameras_per_id > self.num_cameras:
            raise ValueError(f"cameras_per_id={self.cameras_per_id} exceeds num_cameras={self.num_cameras}")
        if self.num_train_ids + self.num_test_ids + 1 > 9999:
            raise ValueError("num_train_ids + num_test_ids must be below 9999 (4-digit Market-1501 pids)")
        return self
