"""The size limits a reader enforces, taken from the settings."""

from dataclasses import dataclass

from backend.config import Settings, get_settings


@dataclass(frozen=True)
class Limits:
    max_line_bytes: int = 16 * 1024**2
    max_json_depth: int = 64
    max_decompressed_bytes: int = 8 * 1024**3
    max_compression_ratio: float = 100.0
    long_record_bytes: int = 64 * 1024
    label_imbalance_ratio: float = 10.0
    max_errors: int = 50

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "Limits":
        s = settings or get_settings()
        return cls(
            max_line_bytes=s.max_line_bytes,
            max_json_depth=s.max_json_depth,
            max_decompressed_bytes=s.max_decompressed_bytes,
            max_compression_ratio=s.max_compression_ratio,
            long_record_bytes=s.long_record_bytes,
            label_imbalance_ratio=s.label_imbalance_ratio,
        )
