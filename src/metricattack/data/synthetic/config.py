"""Configuration of the synthetic pedestrian generator."""

from __future__ import annotations

from pydantic import Field, model_validator

from ...config import StrictModel


class SynthConfig(StrictModel):
    """What to generate; every field changes the bytes written (``workers`` is not here).

    Counts are images unless named ``*_ids``. Each train identity gets
    ``images_per_camera`` images in each of its cameras; each test identity gets one
    query plus ``images_per_camera`` gallery images in each of its cameras. ``train_images``,
    ``query_images`` and ``gallery_images`` set exact totals instead (Market-1501: 12,936 /
    3,368 / 13,115 with 751 / 750 identities, 6 cameras and 2,798 distractors).
    """

    seed: int = Field(0, ge=0, description="master seed; same seed and config give the same bytes")
    num_train_ids: int = Field(ge=1, description="identities in bounding_box_train/")
    num_test_ids: int = Field(ge=1, description="identities in query/ and bounding_box_test/")
    num_cameras: int = Field(6, ge=2, le=9, description="cameras c1..cN (Market-1501 names allow one digit)")
    images_per_camera: int = Field(4, ge=1, description="train/gallery images per identity per camera")
    cameras_per_id: int | None = Field(None, ge=2, description="cameras each identity is seen by (random subset); None = all cameras")
    train_images: int | None = Field(
        None, ge=1, description="total training images, spread evenly over the (identity, camera) pairs; None = images_per_camera each"
    )
    query_images: int | None = Field(
        None,
        ge=1,
        description="total queries: one per (identity, camera) pair of a seeded subset covering every identity; None = every pair",
    )
    gallery_images: int | None = Field(
        None, ge=1, description="total gallery images of test identities (without distractors and junk), spread evenly over the pairs"
    )
    height: int = Field(128, ge=16, le=1024, description="image height in pixels (Market-1501: 128)")
    width: int = Field(64, ge=8, le=512, description="image width in pixels (Market-1501: 64)")
    num_distractors: int = Field(0, ge=0, description="gallery images of unrelated people (pid 0)")
    num_junk: int = Field(0, ge=0, description="gallery junk images, background and body fragments (pid -1)")
    texture: float = Field(
        0.0, ge=0.0, le=64.0, description="amplitude (0..255 units) of each identity's fine cloth texture on the top; 0 = none"
    )
    difficulty: float = Field(1.0, ge=0.0, le=2.0, description="scales camera changes (illumination, blur, occlusion, clutter); 0 = none")
    outfits: int | None = Field(
        None,
        ge=1,
        description="distinct outfits in the world (top colours and pattern, bottom, shoes): every person wears one of them, "
        "so people dress alike, and keeps their own body, skin, hair, cap and bag; None = everyone's own outfit",
    )

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        if self.cameras_per_id is not None and self.cameras_per_id > self.num_cameras:
            raise ValueError(f"cameras_per_id={self.cameras_per_id} exceeds num_cameras={self.num_cameras}")
        if self.num_train_ids + self.num_test_ids + 1 > 9999:
            raise ValueError("num_train_ids + num_test_ids must be below 9999 (4-digit Market-1501 pids)")
        cams = self.cameras_per_id or self.num_cameras
        train_pairs, test_pairs = self.num_train_ids * cams, self.num_test_ids * cams
        if self.train_images is not None and self.train_images < train_pairs:
            raise ValueError(f"train_images={self.train_images} is below one image per (identity, camera) pair ({train_pairs})")
        if self.gallery_images is not None and self.gallery_images < test_pairs:
            raise ValueError(f"gallery_images={self.gallery_images} is below one image per (identity, camera) pair ({test_pairs})")
        if self.query_images is not None and not self.num_test_ids <= self.query_images <= test_pairs:
            raise ValueError(
                f"query_images={self.query_images} must lie between one per test identity ({self.num_test_ids}) "
                f"and one per (identity, camera) pair ({test_pairs})"
            )
        return self

    def record(self) -> dict[str, object]:
        """The config as recorded in ``synth.json``; unset total counts and outfits, and texture 0, are
        left out, so datasets made before those options existed are recognised as the same."""
        unset = {name for name in ("train_images", "query_images", "gallery_images", "outfits") if getattr(self, name) is None}
        if self.texture == 0:
            unset.add("texture")
        return self.model_dump(mode="json", exclude=unset)
