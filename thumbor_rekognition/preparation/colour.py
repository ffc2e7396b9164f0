"""A picture's embedded colour profile: its views in sRGB, as colour-managed viewers show
them, or None where the profile cannot be used or changes nothing."""

from __future__ import annotations

import io
import logging

from PIL import Image, ImageChops, ImageCms

logger = logging.getLogger(__name__)

_PROFILE_MODES = {"RGB": "RGB", "GRAY": "L", "CMYK": "CMYK"}
# Tags through which LittleCMS converts by a table rather than by tone curves and a matrix.
_TABLE_TAGS = frozenset({b"A2B0", b"A2B1", b"A2B2", b"D2B0", b"D2B1", b"D2B2"})


class Profile:
    """A picture's embedded ICC profile, converting its views to sRGB as colour-managed
    viewers do."""

    def __init__(self, icc: bytes) -> None:
        self._profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        self._space = self._profile.profile.xcolor_space.strip()
        self._tables = bool(_TABLE_TAGS & _tag_signatures(icc))
        self._transform: ImageCms.ImageCmsTransform | None = None
        self._failed = False
        self._as_stored = False

    @classmethod
    def of(cls, image: Image.Image) -> Profile | None:
        """The picture's profile, or None when it has none or one that cannot be read.

        An unreadable profile is not refused: the picture is judged as stored. Browsers
        skip a profile they cannot parse and show the stored values, as do viewers without
        colour management and Thumbor's strip_icc() output; refusing would turn away every
        picture whose only fault is a damaged profile, which cameras and editors do write.
        """
        icc = image.info.get("icc_profile")
        if not icc:
            return None
        try:
            return cls(icc)
        except (OSError, ValueError, ImageCms.PyCMSError) as error:
            logger.warning("unreadable colour profile (%s): judged as stored", error)
            return None

    def to_srgb(self, views: list[Image.Image]) -> list[Image.Image] | None:
        """The views converted to sRGB, or None when the profile cannot convert them or
        shows them as stored (an sRGB profile)."""
        mode = _PROFILE_MODES.get(self._space)
        if self._failed or self._as_stored:
            return None
        try:
            if mode is None or any(view.mode != mode for view in views):
                # Browsers ignore a profile that does not describe the pixels it comes with.
                raise ImageCms.PyCMSError(f"a {self._space} profile on {views[0].mode} pixels")
            if self._transform is None:
                self._transform = ImageCms.buildTransform(
                    self._profile,
                    ImageCms.createProfile("sRGB"),
                    mode,
                    "RGB",
                    renderingIntent=ImageCms.Intent.PERCEPTUAL,
                )
                self._as_stored = self._shows_as_stored(self._transform, mode)
                if self._as_stored:
                    return None
            return [self._transform.apply(view) for view in views]
        except ImageCms.PyCMSError as error:
            # Once per picture, not for every frame of an animation.
            self._failed = True
            logger.warning("unusable colour profile (%s): judged as stored", error)
            return None

    def _shows_as_stored(self, transform: ImageCms.ImageCmsTransform, mode: str) -> bool:
        """Whether the profile leaves every colour as stored, give or take rounding.

        Most profiles are sRGB's, and converting through them costs more than all else
        does. Without tables, a profile converts each channel by a tone curve, mixes them
        by a matrix and takes sRGB's curves back: when each channel's 256 levels alone come
        back as they went in, every mix of them does too. A table is not probed.
        """
        if self._tables or mode not in ("RGB", "L"):
            return False
        ramp = Image.frombytes("L", (256, 1), bytes(range(256)))
        if mode == "L":
            probe = ramp
        else:
            dark = Image.new("L", ramp.size)
            probe = Image.new(mode, (256, 4))
            for row, bands in enumerate(
                [(ramp, dark, dark), (dark, ramp, dark), (dark, dark, ramp), (ramp, ramp, ramp)]
            ):
                probe.paste(Image.merge(mode, bands), (0, row))
        difference = ImageChops.difference(transform.apply(probe), probe.convert("RGB"))
        return all(isinstance(band, tuple) and band[1] <= 2 for band in difference.getextrema())


def _tag_signatures(icc: bytes) -> set[bytes]:
    """The tags an ICC profile's table names (ICC.1: a count at byte 128, 12 bytes a tag)."""
    count = min(int.from_bytes(icc[128:132], "big"), max(0, len(icc) - 132) // 12)
    return {icc[132 + 12 * index : 136 + 12 * index] for index in range(count)}
