"""Measurements per object (:func:`napari_tessera.measure`), the CSV table written atomically,
and the voxel size a file states (:func:`napari_tessera.images.read_voxel_size`).

Every expected value here is worked out by hand from tiny labelled arrays.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_tessera import InputError, measure, write_table_csv
from napari_tessera.images import read_voxel_size
from napari_tessera.measure import fit_voxel_size


@pytest.fixture
def two_d():
    """Labels 6x8: object 1 a 2x3 block (rows 1-2, cols 1-3), object 2 a 2x3 block (rows
    4-5, cols 5-7), object 3 one pixel (4, 2); an image whose pixel value is 8*row + col, and
    a second channel 10 times the first."""
    labels = np.zeros((6, 8), np.uint16)
    labels[1:3, 1:4] = 1
    labels[4:6, 5:8] = 2
    labels[4, 2] = 3
    ch0 = np.arange(48, dtype=np.uint16).reshape(6, 8)
    return labels, np.stack([ch0, 10 * ch0], axis=-1)  # channels last


COLUMNS_2D = [
    "label",
    "centroid_y_px",
    "centroid_x_px",
    "centroid_y_um",
    "centroid_x_um",
    "bbox_y0_px",
    "bbox_x0_px",
    "bbox_y1_px",
    "bbox_x1_px",
    "area_px",
    "area_um2",
    "equivalent_diameter_px",
    "equivalent_diameter_um",
    "solidity",
    "eccentricity",
    "mean_intensity_ch0",
    "max_intensity_ch0",
    "integrated_intensity_ch0",
    "mean_intensity_ch1",
    "max_intensity_ch1",
    "integrated_intensity_ch1",
]


def test_2d_columns_against_hand_computed_values(two_d):
    labels, image = two_d
    t = measure(labels, image, voxel_size=(2.0, 0.5))
    assert list(t.columns) == COLUMNS_2D
    assert list(t["label"]) == [1, 2, 3]
    # object 1: rows 1,2 and columns 1,2,3; values 8r + c: 9 10 11 / 17 18 19
    one = t.iloc[0]
    assert (one.centroid_y_px, one.centroid_x_px) == (1.5, 2.0)
    assert (one.centroid_y_um, one.centroid_x_um) == (3.0, 1.0)  # 1.5 * 2, 2 * 0.5
    assert (one.bbox_y0_px, one.bbox_x0_px, one.bbox_y1_px, one.bbox_x1_px) == (1, 1, 3, 4)
    assert one.area_px == 6 and one.area_um2 == pytest.approx(6.0)  # 6 px of 2 x 0.5 um2
    assert one.equivalent_diameter_px == pytest.approx(math.sqrt(4 * 6 / math.pi))
    assert one.equivalent_diameter_um == pytest.approx(math.sqrt(4 * 6.0 / math.pi))
    assert one.mean_intensity_ch0 == pytest.approx(14.0)
    assert one.max_intensity_ch0 == 19
    assert one.integrated_intensity_ch0 == 84
    assert one.mean_intensity_ch1 == pytest.approx(140.0)
    assert one.max_intensity_ch1 == 190
    assert one.integrated_intensity_ch1 == 840
    # a rectangle is its own convex hull; its second moments: row variance 1/4 px^2 (2 rows),
    # column variance 2/3 px^2 (3 columns); in um: 1/4 * 2^2 = 1 and 2/3 * 0.5^2 = 1/6
    assert one.solidity == pytest.approx(1.0)
    assert one.eccentricity == pytest.approx(math.sqrt(1 - (1 / 6) / 1))
    # object 2: rows 4,5, columns 5,6,7: 37 38 39 / 45 46 47
    two = t.iloc[1]
    assert (two.centroid_y_px, two.centroid_x_px) == (4.5, 6.0)
    assert (two.bbox_y0_px, two.bbox_x0_px, two.bbox_y1_px, two.bbox_x1_px) == (4, 5, 6, 8)
    assert two.integrated_intensity_ch0 == 37 + 38 + 39 + 45 + 46 + 47
    assert two.max_intensity_ch0 == 47 and two.mean_intensity_ch0 == pytest.approx(42.0)
    # object 3: one pixel, value 34
    three = t.iloc[2]
    assert (three.area_px, three.area_um2) == (1, pytest.approx(1.0))
    assert (three.centroid_y_px, three.centroid_x_px) == (4.0, 2.0)
    assert three.mean_intensity_ch0 == three.max_intensity_ch0 == 34
    assert three.integrated_intensity_ch1 == 340 and three.eccentricity == 0.0


def test_2d_shape_in_pixels_without_a_voxel_size(two_d):
    labels, image = two_d
    t = measure(labels, image[..., 0])
    assert not [c for c in t.columns if c.endswith(("_um", "_um2", "_um3"))]
    assert list(t.columns) == [c for c in COLUMNS_2D if "_um" not in c and "ch1" not in c]
    # square pixels: the shape in pixels (eccentricity of 2x3 rows x columns)
    assert t.iloc[0].eccentricity == pytest.approx(math.sqrt(1 - (1 / 4) / (2 / 3)))


def test_labels_alone_give_no_intensity_columns_and_unit_names_columns(two_d):
    labels, _ = two_d
    t = measure(labels, voxel_size=0.1, unit="nm")  # one number: every axis
    assert not [c for c in t.columns if "intensity" in c]
    assert t.iloc[0].area_nm2 == pytest.approx(6 * 0.01)
    assert t.iloc[0].centroid_x_nm == pytest.approx(0.2)
    assert "equivalent_diameter_nm" in t.columns


def test_channels_first_last_or_named_by_image_axes(two_d):
    labels, image = two_d
    last = measure(labels, image)
    first = measure(labels, np.moveaxis(image, -1, 0))
    said = measure(labels, np.moveaxis(image, -1, 0), image_axes="CYX")
    pd.testing.assert_frame_equal(last, first)
    pd.testing.assert_frame_equal(last, said)
    named = measure(labels, image, channel_names=["dapi", "gfp"])
    assert named.iloc[0].mean_intensity_gfp == pytest.approx(140.0)
    assert "mean_intensity_ch0" not in named.columns


def test_3d_volumes_centroids_and_boxes():
    """Object 1: z 0-1, y 1-2, x 1-3 (12 voxels); object 2: one voxel at (2, 3, 4)."""
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[0:2, 1:3, 1:4] = 1
    labels[2, 3, 4] = 2
    image = (np.arange(60, dtype=np.float32).reshape(3, 4, 5) + 1)[:, None]  # ZCYX, 1 channel
    t = measure(labels, image, image_axes="ZCYX", voxel_size=(2.0, 0.5, 0.5))
    assert list(t.columns) == [
        "label",
        "centroid_z_px",
        "centroid_y_px",
        "centroid_x_px",
        "centroid_z_um",
        "centroid_y_um",
        "centroid_x_um",
        "bbox_z0_px",
        "bbox_y0_px",
        "bbox_x0_px",
        "bbox_z1_px",
        "bbox_y1_px",
        "bbox_x1_px",
        "volume_vox",
        "volume_um3",
        "equivalent_diameter_px",
        "equivalent_diameter_um",
        "mean_intensity_ch0",
        "max_intensity_ch0",
        "integrated_intensity_ch0",
    ]
    one = t.iloc[0]
    assert (one.centroid_z_px, one.centroid_y_px, one.centroid_x_px) == (0.5, 1.5, 2.0)
    assert (one.centroid_z_um, one.centroid_y_um, one.centroid_x_um) == (1.0, 0.75, 1.0)
    assert [one[f"bbox_{a}"] for a in ("z0_px", "y0_px", "x0_px")] == [0, 1, 1]
    assert [one[f"bbox_{a}"] for a in ("z1_px", "y1_px", "x1_px")] == [2, 3, 4]
    assert one.volume_vox == 12 and one.volume_um3 == pytest.approx(12 * 0.5)
    assert one.equivalent_diameter_px == pytest.approx((6 * 12 / math.pi) ** (1 / 3))
    assert one.equivalent_diameter_um == pytest.approx((6 * 6.0 / math.pi) ** (1 / 3))
    # values 20z + 5y + x + 1 over z 0-1, y 1-2, x 1-3
    values = [20 * z + 5 * y + x + 1 for z in (0, 1) for y in (1, 2) for x in (1, 2, 3)]
    assert one.integrated_intensity_ch0 == sum(values)
    assert one.mean_intensity_ch0 == pytest.approx(sum(values) / 12)
    assert one.max_intensity_ch0 == max(values)
    two = t.iloc[1]
    assert two.volume_vox == 1 and two.max_intensity_ch0 == 20 * 2 + 5 * 3 + 4 + 1


def test_stacks_over_time_are_measured_per_time_point(two_d):
    labels, image = two_d
    stack = np.stack([labels, np.where(labels == 2, 7, 0).astype(labels.dtype)])  # TYX
    t = measure(stack, np.stack([image, image]), axes="TYX", voxel_size=(2.0, 0.5))
    assert list(t.columns[:2]) == ["t", "label"]
    assert list(zip(t["t"], t["label"])) == [(0, 1), (0, 2), (0, 3), (1, 7)]
    pd.testing.assert_frame_equal(
        t[t["t"] == 0].drop(columns="t").reset_index(drop=True),
        measure(labels, image, voxel_size=(2.0, 0.5)),
    )
    assert t.iloc[3].centroid_x_px == 6.0
    # 4D labels are TZYX unless said otherwise
    t4 = measure(np.stack([labels[None], labels[None]]))
    assert "centroid_z_px" in t4.columns and list(t4["t"]) == [0, 0, 0, 1, 1, 1]


def test_labels_given_in_another_axis_order(two_d):
    labels, image = two_d
    stack = np.stack([labels, labels])  # ZYX
    ref = measure(stack, image[None].repeat(2, 0), voxel_size=(3.0, 2.0, 0.5))
    moved = measure(
        np.moveaxis(stack, 0, -1),
        np.moveaxis(image[None].repeat(2, 0), 0, -2),
        axes="YXZ",
        image_axes="YXZC",
        voxel_size=(3.0, 2.0, 0.5),
    )
    pd.testing.assert_frame_equal(ref, moved)


def test_no_objects_gives_the_columns_and_no_rows():
    t = measure(np.zeros((5, 5), np.uint8), np.ones((5, 5)), voxel_size=(1.0, 1.0))
    assert len(t) == 0 and "area_um2" in t.columns and "mean_intensity_ch0" in t.columns


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"labels": np.zeros((4, 4), np.float32)}, "integers"),
        ({"labels": -np.ones((4, 4), np.int32)}, "negative"),
        ({"labels": np.zeros((2, 2, 2, 2, 2), int)}, "2D (YX) or 3D"),
        ({"labels": np.zeros((4, 4), int), "image": np.zeros((4, 5))}, "does not match"),
        ({"labels": np.zeros((3, 3), int), "image": np.zeros((3, 3, 3))}, "first or last"),
        ({"labels": np.zeros((4, 4), int), "voxel_size": (1, 1, 1)}, "give Y,X"),
        ({"labels": np.zeros((2, 4, 4), int), "voxel_size": (1, 1)}, "give Z,Y,X"),
        ({"labels": np.zeros((4, 4), int), "voxel_size": (0, 1)}, "positive"),
        ({"labels": np.zeros((4, 4), int), "axes": "ZYX"}, "name 3 axes"),
        ({"labels": np.zeros((4, 4), int), "axes": "CX"}, "YX, ZYX"),
        ({"labels": np.zeros((4, 4), int), "unit": "µm 2"}, "unit"),
        (
            {"labels": np.zeros((4, 4), int), "image": np.zeros((4, 4)), "channel_names": "ab"},
            "channel name",
        ),
        ({"labels": np.zeros((4, 4), int), "image": np.zeros((4, 4), complex)}, "real"),
    ],
)
def test_bad_arguments_are_one_line_input_errors(kwargs, words):
    kwargs = dict(kwargs)
    labels = kwargs.pop("labels")
    with pytest.raises(InputError) as info:
        measure(labels, **kwargs)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_fit_voxel_size_from_a_file():
    assert fit_voxel_size((2.0, 0.5, 0.25), "YX") == ((0.5, 0.25), None)
    assert fit_voxel_size((2.0, 0.5, 0.25), "TZYX") == ((2.0, 0.5, 0.25), None)
    sizes, note = fit_voxel_size((0.5, 0.25), "ZYX")
    assert sizes is None and "no Z spacing" in note
    assert fit_voxel_size(None, "ZYX") == (None, None)


# -- the CSV file --------------------------------------------------------------------------------
def test_write_table_csv_round_trips(two_d, tmp_path):
    labels, image = two_d
    t = measure(labels, image, voxel_size=(2.0, 0.5))
    path = write_table_csv(t, tmp_path / "objects.csv")
    back = pd.read_csv(path)
    assert list(back.columns) == list(t.columns)  # no index column
    pd.testing.assert_frame_equal(back, t, check_dtype=False)


def test_a_failed_write_leaves_no_partial_file_and_the_old_table(two_d, tmp_path, monkeypatch):
    labels, image = two_d
    t = measure(labels, image)
    path = tmp_path / "objects.csv"
    path.write_text("the old table\n")
    real = pd.DataFrame.to_csv

    def half_then_fail(self, target, *args, **kwargs):
        real(self.head(1), target, *args, **kwargs)  # part of the table is on disk
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_table_csv(t, path)
    assert path.read_text() == "the old table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects.csv"]  # no temporary file
    with pytest.raises(OSError):
        write_table_csv(t, tmp_path / "new.csv")
    assert not (tmp_path / "new.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects.csv"]


def test_write_table_csv_refuses_a_missing_folder_or_a_folder(two_d, tmp_path):
    t = measure(two_d[0])
    with pytest.raises(InputError, match="does not exist"):
        write_table_csv(t, tmp_path / "nowhere" / "t.csv")
    with pytest.raises(InputError, match="folder"):
        write_table_csv(t, tmp_path)


# -- voxel size from files -----------------------------------------------------------------------
def test_read_voxel_size_imagej(tmp_path):
    stack = np.zeros((3, 8, 8), np.uint16)
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        stack,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.5),  # pixels per unit: X, then Y
        metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"},
    )
    assert read_voxel_size(path) == pytest.approx((2.0, 0.5, 0.25))
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(
        flat, stack[0], imagej=True, resolution=(2.0, 2.0), metadata={"unit": "nm", "axes": "YX"}
    )
    assert read_voxel_size(flat) == pytest.approx((0.5e-3, 0.5e-3))
    no_unit = tmp_path / "no_unit.tif"  # ImageJ without a unit: uncalibrated pixels
    tifffile.imwrite(no_unit, stack, imagej=True, resolution=(4.0, 4.0), metadata={"axes": "ZYX"})
    assert read_voxel_size(no_unit) is None


def test_read_voxel_size_ome_tiff(tmp_path):
    path = tmp_path / "a.ome.tif"
    meta = {
        "axes": "ZYX",
        "PhysicalSizeX": 300.0,
        "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 0.3,
        "PhysicalSizeZ": 1.5,
    }
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint8), ome=True, metadata=meta)
    assert read_voxel_size(path) == pytest.approx((1.5, 0.3, 0.3))


def test_read_voxel_size_plain_tiffs_npy_and_ome_zarr(tmp_path):
    cm = tmp_path / "cm.tif"
    tifffile.imwrite(cm, np.zeros((8, 8), np.uint8), resolution=(5000, 5000), resolutionunit=3)
    assert read_voxel_size(cm) == pytest.approx((2.0, 2.0))  # 5000 px/cm: 2 um
    inch = tmp_path / "inch.tif"  # 72 dpi from an image editor is no pixel size
    tifffile.imwrite(inch, np.zeros((8, 8), np.uint8), resolution=(72, 72), resolutionunit=2)
    assert read_voxel_size(inch) is None
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, np.zeros((8, 8), np.uint8))
    assert read_voxel_size(bare) is None
    np.save(tmp_path / "a.npy", np.zeros((8, 8)))
    assert read_voxel_size(tmp_path / "a.npy") is None
    assert read_voxel_size(tmp_path / "missing.tif") is None

    import zarr

    group = zarr.open_group(str(tmp_path / "img.zarr"), mode="w")
    group.create_array("0", shape=(2, 8, 8), dtype="u2")
    um = "micrometer"
    group.attrs["multiscales"] = [
        {
            "axes": [{"name": a, "type": "space", "unit": um} for a in "zyx"],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2, 1, 1]}]}
            ],
            "coordinateTransformations": [{"type": "scale", "scale": [1.0, 0.5, 0.5]}],
        }
    ]
    assert read_voxel_size(tmp_path / "img.zarr") == pytest.approx((2.0, 0.5, 0.5))
