"""Data: fetching the embedded real sample, preparing it, and readers for every dataset."""

from mssdf.data.io import DataError, RasterInfo, check_aligned, raster_info, read_raster

__all__ = ["DataError", "RasterInfo", "check_aligned", "raster_info", "read_raster"]
