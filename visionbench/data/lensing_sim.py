"""Simulated DeepLense-style strong-lensing images (Models I, II, III) with lenstronomy.

The recipe follows the DeepLense simulations (mwt5345/DeepLenseSim, `deeplense/lens.py` and
`Model_{I,II,III}/sim_*.py`; notes in shared/research/deeplense.md): an SIE main lens of 1e12 M☉ plus external
shear at z = 0.5 lensing an elliptical Sérsic source at z = 1.0, with no substructure, 25 CDM point-mass subhalos,
or an axion "vortex" of 100 point masses on a line whose half-length is set by the axion mass m_a. The instrument
numbers are pinned in `PRESETS`, not taken from lenstronomy's survey presets (1.14 changed the Euclid zero point).

`simulate()` writes a folder read by `data/deeplense.py`:

- `images.npy`: float32 (N, 1, H, W), raw counts (Model I) or e-/s (Models II, III), not normalised;
- `targets.npy`: float32 log10(m_a) in [-24, -22] (variant "regression") or int64 class i % 3 (variant "classes");
- `progress.json`: the parameters and how many images are on disk, so a killed run resumes where it stopped;
- `meta.json`: written last and atomically; its presence with `"complete": true` is what makes the folder usable.

Image i draws everything (source position, substructure, exposure, noise, target) from its own generator
`np.random.default_rng([seed, i])`, so the output does not depend on the worker count or chunk size.

Decisions:

- variant "regression" needs substructure "axion": log10 m_a only acts through the vortex, so with none/cdm the
  target would be noise. Variant "classes" ignores `substructure` (each class has its own) and records "mixed".
- An unfinished folder holding a run with other parameters is refused (UserError), not overwritten.
- Einstein radii use the original's formula with luminosity distances (1e12 M☉ → 1.2815″, as the released data);
  angular-diameter distances would give 1.665″.
- lenstronomy is imported lazily: it is an optional dependency.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionbench.data.sources import cache_dir
from visionbench.errors import UserError
from visionbench.utils.io import read_json, write_json

log = logging.getLogger(__name__)

FORMAT = "visionbench-lensing"
FORMAT_VERSION = 1
SUBSTRUCTURES = ("none", "cdm", "axion")
CLASS_NAMES = ("no_substructure", "cdm", "axion")
VARIANTS = ("regression", "classes")
LOG10_MASS_RANGE = (-24.0, -22.0)  # log10(m_a / eV)
MIXED = "mixed"  # the substructure recorded for the "classes" variant

# Cosmology and lens system, shared by all presets (deeplense.md, "Shared by Models I, II and III").
H0, OM0, OB0 = 70.0, 0.3, 0.05
Z_LENS, Z_SOURCE = 0.5, 1.0
MAIN_LENS_MASS = 1e12  # M☉
MAIN_LENS = {"e1": 0.1, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}
SHEAR = {"gamma1": 0.05, "gamma2": 0.0}
SOURCE_SHAPE = {"R_sersic": 0.25, "n_sersic": 1.0, "e1": -0.1, "e2": 0.1}  # R in arcsec
SOURCE_CENTER_RANGE = (-0.35, 0.35)  # arcsec, each axis
AXION_POINTS = 100
AXION_TOTAL_MASS = 3e10  # M☉
AXION_HALF_LENGTH = 0.03  # arcsec at m_a = 1e-22 eV; scales as 1 / m_a
CDM_SUBHALOS = 25
CDM_MASS_RANGE = (1e6, 1e10)  # M☉
CDM_MASS_SLOPE = -0.9  # dN/dm ∝ m^β
CDM_RADIUS_RANGE = (0.25, 2.0)  # arcsec
NUM_POINT_MASSES = {"none": 0, "cdm": CDM_SUBHALOS, "axion": AXION_POINTS}
KWARGS_NUMERICS = {"supersampling_factor": 1, "supersampling_convolution": False}


@dataclass(frozen=True)
class Preset:
    """Instrument and noise of one DeepLense model. Angles in arcsec, times in seconds.

    Model I sets `source_amp`, `background_rms` and `log10_exposure_range`: counts are
    Poisson(t × (model + N(0, model / t) + N(0, background_rms²))) with t = 10^U(range), as the original
    `simple_sim`. Models II and III set `source_magnitude` and the `SingleBand` numbers: the image is in e-/s plus
    lenstronomy's background (read noise, sky) and Poisson noise.
    """

    name: str
    num_pix: int
    pixel_scale: float  # arcsec per pixel
    psf_fwhm: float  # arcsec
    psf_truncation: float  # the Gaussian kernel is cut at this many sigma
    source_amp: float | None = None
    background_rms: float | None = None
    log10_exposure_range: tuple[float, float] | None = None
    source_magnitude: float | None = None
    read_noise: float | None = None  # e- per exposure
    ccd_gain: float | None = None  # e- per ADU (unused for noise: data are in e-)
    exposure_time: float | None = None  # per exposure
    num_exposures: int = 1
    sky_brightness: float | None = None  # mag per arcsec²
    magnitude_zero_point: float | None = None  # magnitude giving 1 e-/s

    @property
    def survey(self) -> bool:
        """True for the SingleBand presets (Models II, III)."""
        return self.source_magnitude is not None

    def kwargs_single_band(self) -> dict[str, Any]:
        return {
            "pixel_scale": self.pixel_scale,
            "read_noise": self.read_noise,
            "ccd_gain": self.ccd_gain,
            "exposure_time": self.exposure_time,
            "num_exposures": self.num_exposures,
            "sky_brightness": self.sky_brightness,
            "magnitude_zero_point": self.magnitude_zero_point,
            "seeing": self.psf_fwhm,
            "psf_type": "GAUSSIAN",
            "truncation": self.psf_truncation,
            "data_count_unit": "e-",
        }


PRESETS: dict[str, Preset] = {
    "model_i": Preset(
        "model_i", num_pix=150, pixel_scale=0.05, psf_fwhm=0.087, psf_truncation=3,
        source_amp=20.0, background_rms=0.01, log10_exposure_range=(3.0, 3.5),
    ),
    # Euclid VIS as in lenstronomy 1.9.2 (coadd_years=6): 4 × 565 s, zero point 24.0
    "model_ii": Preset(
        "model_ii", num_pix=64, pixel_scale=0.101, psf_fwhm=0.16, psf_truncation=5,
        source_magnitude=20.0, read_noise=4.2, ccd_gain=3.1, exposure_time=565.0, num_exposures=4,
        sky_brightness=22.35, magnitude_zero_point=24.0,
    ),
    # HST-like
    "model_iii": Preset(
        "model_iii", num_pix=64, pixel_scale=0.08, psf_fwhm=0.08, psf_truncation=5,
        source_magnitude=20.0, read_noise=4.0, ccd_gain=2.5, exposure_time=5400.0, num_exposures=1,
        sky_brightness=22.3, magnitude_zero_point=25.96,
    ),
}  # fmt: skip


def _lenstronomy():
    """The lenstronomy module, or a UserError saying how to install it."""
    try:
        import lenstronomy
    except ImportError:
        raise UserError(
            "lenstronomy is not installed; pip install 'visionbench[lensing]' (or lenstronomy>=1.14)"
        ) from None
    return lenstronomy


def lenstronomy_version() -> str:
    return _lenstronomy().__version__


def einstein_radius(mass: float | np.ndarray) -> float | np.ndarray:
    """Einstein radius in arcsec of a point mass in M☉ at Z_LENS for a source at Z_SOURCE.

    The original's formula: θ = sqrt(4GM/c² · D_ls / (D_l D_s)) with luminosity distances and D_ls = D_s - D_l,
    which gives the released data's 1.2815″ for 1e12 M☉.
    """
    return _arcsec_per_sqrt_msun() * np.sqrt(mass)


_ARCSEC_PER_SQRT_MSUN: float | None = None


def _arcsec_per_sqrt_msun() -> float:
    global _ARCSEC_PER_SQRT_MSUN
    if _ARCSEC_PER_SQRT_MSUN is None:
        from astropy import units
        from astropy.constants import G, M_sun, c
        from astropy.cosmology import FlatLambdaCDM

        cosmo = FlatLambdaCDM(H0=H0, Om0=OM0, Ob0=OB0)
        d_l = cosmo.luminosity_distance(Z_LENS).to(units.m)
        d_s = cosmo.luminosity_distance(Z_SOURCE).to(units.m)
        theta = np.sqrt(4 * G * M_sun / c**2 * (d_s - d_l) / (d_l * d_s)).decompose().value  # radians
        _ARCSEC_PER_SQRT_MSUN = float(np.degrees(theta) * 3600)
    return _ARCSEC_PER_SQRT_MSUN


class Renderer:
    """One preset and substructure kind: the lenstronomy image model is built once and reused for every image."""

    def __init__(self, preset: Preset, substructure: str, fused: bool | None = None):
        """`fused`: sum the point masses with `PointMassSum` (default: when numba is importable); False keeps one
        lenstronomy POINT_MASS profile per mass, which gives the same images up to float rounding, ~5x slower."""
        _lenstronomy()
        from lenstronomy.Data.imaging_data import ImageData
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.image_model import ImageModel
        from lenstronomy.LensModel.lens_model import LensModel
        from lenstronomy.LightModel.light_model import LightModel
        from lenstronomy.SimulationAPI.sim_api import SimAPI
        from lenstronomy.Util import util

        self.preset, self.substructure = preset, substructure
        count = NUM_POINT_MASSES[substructure]
        kernel = _point_mass_kernel() if count and fused is not False else None
        if fused and kernel is None:
            raise UserError("lensing: fused point masses need numba (pip install numba)")
        self.fused = kernel is not None
        if self.fused:
            lens_models, profile_kwargs = ["SIE", "SHEAR", "TABULATED_DEFLECTIONS"], [None, None, {}]
            profile_kwargs[2]["custom_class"] = PointMassSum(kernel)
        else:
            lens_models, profile_kwargs = ["SIE", "SHEAR"] + ["POINT_MASS"] * count, None
        if preset.survey:
            kwargs_model = {"lens_model_list": lens_models, "source_light_model_list": ["SERSIC_ELLIPSE"]}
            if profile_kwargs:
                kwargs_model["lens_profile_kwargs_list"] = profile_kwargs
            self.band = SimAPI(preset.num_pix, preset.kwargs_single_band(), kwargs_model)
            self.image_model = self.band.image_model_class(KWARGS_NUMERICS)
            # the amplitude of a magnitude-20 source depends on its shape only, not on where it sits
            _, (source,), _ = self.band.magnitude2amplitude(
                None, [{"magnitude": preset.source_magnitude, **SOURCE_SHAPE, "center_x": 0.0, "center_y": 0.0}]
            )
            self.source_amp = float(source["amp"])
            self.background_noise = float(self.band.background_noise)  # e-/s per pixel
        else:
            _, _, ra0, dec0, _, _, pix2angle, _ = util.make_grid_with_coordtransform(
                num_pix=preset.num_pix, delta_pix=preset.pixel_scale, subgrid_res=1, inverse=False
            )
            data = ImageData(
                image_data=np.zeros((preset.num_pix, preset.num_pix)),
                ra_at_xy_0=ra0,
                dec_at_xy_0=dec0,
                transform_pix2angle=pix2angle,
                background_rms=preset.background_rms,
                exposure_time=1.0,  # placeholder: noise is added below, per image
            )
            psf = PSF(psf_type="GAUSSIAN", fwhm=preset.psf_fwhm, pixel_size=preset.pixel_scale,
                      truncation=preset.psf_truncation)  # fmt: skip
            self.image_model = ImageModel(
                data,
                psf,
                LensModel(lens_models, profile_kwargs_list=profile_kwargs),
                LightModel(["SERSIC_ELLIPSE"]),
                kwargs_numerics=KWARGS_NUMERICS,
            )
            self.source_amp = float(preset.source_amp)
        self.main_lens = {"theta_E": float(einstein_radius(MAIN_LENS_MASS)), **MAIN_LENS}
        self.axion_theta_e = float(einstein_radius(AXION_TOTAL_MASS / AXION_POINTS))

    def draw(self, rng: np.random.Generator, log10_m_a: float | None = None) -> tuple[np.ndarray, float]:
        """One noisy image (H, W) float32 and its log10 m_a, all drawn from `rng` in a fixed order.

        `log10_m_a` overrides the drawn mass (it is still drawn, so every later draw is unchanged).
        """
        drawn = float(rng.uniform(*LOG10_MASS_RANGE))
        log10_m_a = drawn if log10_m_a is None else float(log10_m_a)
        source_x, source_y = rng.uniform(*SOURCE_CENTER_RANGE, size=2)
        kwargs_lens = [self.main_lens, SHEAR] + self._point_masses(rng, log10_m_a)
        kwargs_source = [{"amp": self.source_amp, **SOURCE_SHAPE, "center_x": source_x, "center_y": source_y}]
        model = self.image_model.image(kwargs_lens, kwargs_source)
        return self._add_noise(model, rng).astype(np.float32), log10_m_a

    def _point_masses(self, rng: np.random.Generator, log10_m_a: float) -> list[dict[str, float]]:
        if self.substructure == "axion":
            half_length = AXION_HALF_LENGTH * 10.0 ** (-22.0 - log10_m_a)  # arcsec: 3″ at 1e-24 eV, 0.03″ at 1e-22
            angle = rng.uniform(0, 2 * np.pi)
            along = np.linspace(-half_length, half_length, AXION_POINTS)
            xs, ys = along * np.cos(angle), along * np.sin(angle)
            theta_e = np.full(AXION_POINTS, self.axion_theta_e)
        elif self.substructure == "cdm":
            # inverse-CDF draw from dN/dm ∝ m^β between the bounds (the original's draw_old_cdm_sub_masses)
            p = CDM_MASS_SLOPE + 1
            lo, hi = CDM_MASS_RANGE[0] ** p, CDM_MASS_RANGE[1] ** p
            masses = (lo + (hi - lo) * rng.uniform(size=CDM_SUBHALOS)) ** (1 / p)
            radius = rng.uniform(*CDM_RADIUS_RANGE, size=CDM_SUBHALOS)
            angle = rng.uniform(0, 2 * np.pi, size=CDM_SUBHALOS)
            xs, ys = radius * np.sin(angle), radius * np.cos(angle)
            theta_e = einstein_radius(masses)
        else:
            return []
        if self.fused:
            return [{"theta_E": theta_e, "center_xs": xs, "center_ys": ys}]
        return [
            {"theta_E": t, "center_x": x, "center_y": y}
            for t, x, y in zip(theta_e.tolist(), xs.tolist(), ys.tolist(), strict=True)
        ]

    def _add_noise(self, model: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        preset = self.preset
        if preset.survey:
            # lenstronomy's SingleBand.noise_for_model, drawn from our generator instead of np.random
            noise = rng.standard_normal(model.shape) * self.background_noise
            return model + noise + rng.standard_normal(model.shape) * self.band.flux_noise(model)
        # Model I: the original simple_sim, Gaussian Poisson + background, then Poisson counts
        exposure = 10.0 ** rng.uniform(*preset.log10_exposure_range)  # seconds
        poisson = rng.standard_normal(model.shape) * np.sqrt(np.abs(model) / exposure)
        background = rng.standard_normal(model.shape) * preset.background_rms
        return rng.poisson(np.clip(exposure * (model + poisson + background), 0, None)).astype(np.float64)


_KERNEL: list = []  # [kernel or None] once looked up


def _point_mass_kernel() -> Callable | None:
    """A numba-compiled sum of point-mass deflections, or None without numba (a lenstronomy dependency)."""
    if not _KERNEL:
        try:
            import numba
        except ImportError:
            _KERNEL.append(None)
        else:
            _KERNEL.append(numba.njit(cache=False)(_sum_point_masses))
    return _KERNEL[0]


def _sum_point_masses(x, y, xs, ys, theta_e, r_min):  # compiled by numba
    """Deflection at (x, y) of point masses at (xs, ys): Σ θ_E² (x - x_j) / max(r, r_min)², lenstronomy's
    PointMass.derivatives summed in one loop (it runs one numpy pass per mass)."""
    alpha_x, alpha_y = np.empty_like(x), np.empty_like(y)
    r2_min = r_min * r_min
    for i in range(x.shape[0]):
        sum_x, sum_y = 0.0, 0.0
        for j in range(xs.shape[0]):
            dx, dy = x[i] - xs[j], y[i] - ys[j]
            r2 = max(dx * dx + dy * dy, r2_min)
            weight = theta_e[j] * theta_e[j] / r2
            sum_x += weight * dx
            sum_y += weight * dy
        alpha_x[i], alpha_y[i] = sum_x, sum_y
    return alpha_x, alpha_y


class PointMassSum:
    """The `custom_class` of a lenstronomy TABULATED_DEFLECTIONS profile standing for many POINT_MASS profiles:
    kwargs `theta_E`, `center_xs`, `center_ys` are arrays, one entry per mass."""

    def __init__(self, kernel: Callable):
        from lenstronomy.LensModel.Profiles.point_mass import PointMass

        self.kernel, self.r_min = kernel, float(PointMass().r_min)

    def __call__(self, x, y, theta_E, center_xs, center_ys):  # lenstronomy's keyword names
        shape = np.shape(x)
        x, y = np.ravel(np.asarray(x, dtype=np.float64)), np.ravel(np.asarray(y, dtype=np.float64))
        alpha_x, alpha_y = self.kernel(
            x, y, np.asarray(center_xs, np.float64), np.asarray(center_ys, np.float64),
            np.asarray(theta_E, np.float64), self.r_min,
        )  # fmt: skip
        return alpha_x.reshape(shape), alpha_y.reshape(shape)


def simulate_image(
    preset: str, substructure: str, rng: np.random.Generator, log10_m_a: float | None = None
) -> tuple[np.ndarray, float]:
    """One image (H, W) float32 and its log10 m_a; builds a model each call, so use `simulate` for many."""
    _check("preset", preset, tuple(PRESETS))
    _check("substructure", substructure, SUBSTRUCTURES)
    return Renderer(PRESETS[preset], substructure).draw(rng, log10_m_a)


# ---------------------------------------------------------------- chunks (run in the parent or in pool workers)

_WORKER: dict[str, Any] = {}


def _init_worker(preset: str, seed: int, variant: str, substructure: str) -> None:
    """Pool initializer (and the single-process path): remember the run, build renderers on first use."""
    _WORKER.clear()
    _WORKER.update(preset=PRESETS[preset], seed=seed, variant=variant, substructure=substructure, renderers={})


def _render_chunk(span: tuple[int, int]) -> tuple[int, np.ndarray, np.ndarray]:
    start, stop = span
    renderers, variant = _WORKER["renderers"], _WORKER["variant"]
    images, targets = [], []
    for i in range(start, stop):
        rng = np.random.default_rng([_WORKER["seed"], i])
        kind = SUBSTRUCTURES[i % len(SUBSTRUCTURES)] if variant == "classes" else _WORKER["substructure"]
        if kind not in renderers:
            renderers[kind] = Renderer(_WORKER["preset"], kind)
        image, log10_m_a = renderers[kind].draw(rng)
        images.append(image)
        targets.append(SUBSTRUCTURES.index(kind) if variant == "classes" else log10_m_a)
    target_dtype = np.int64 if variant == "classes" else np.float32
    return start, np.stack(images)[:, None], np.asarray(targets, dtype=target_dtype)


# ---------------------------------------------------------------- folder format


def _check(option: str, value: Any, accepted: tuple) -> None:
    if value not in accepted:
        raise UserError(f"{option}: expected one of {', '.join(map(str, accepted))}, got {value!r}")


def _check_int(option: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{option}: expected an integer >= {minimum}, got {value!r}")


def _params(preset: str, n: int, seed: int, variant: str, substructure: str) -> dict[str, Any]:
    """Validated parameters that identify a simulation (what meta.json and progress.json record)."""
    _check("preset", preset, tuple(PRESETS))
    _check("variant", variant, VARIANTS)
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    if variant == "classes":
        _check("substructure", substructure, (*SUBSTRUCTURES, MIXED))
        substructure = MIXED
    else:
        _check("substructure", substructure, SUBSTRUCTURES)
        if substructure != "axion":
            raise UserError(
                f"substructure: variant 'regression' needs 'axion' (log10 m_a acts only through the axion vortex), "
                f"got {substructure!r}; use variant 'classes' for none/cdm/axion"
            )
    return {"preset": preset, "n": int(n), "seed": int(seed), "variant": variant, "substructure": substructure}


def cache_path(preset: str, n: int, seed: int, variant: str = "regression", substructure: str = "axion") -> Path:
    """The cache folder of a simulation, keyed by its parameters and the lenstronomy version."""
    p = _params(preset, n, seed, variant, substructure)
    name = f"{p['preset']}-{p['variant']}-{p['substructure']}-n{p['n']}-s{p['seed']}-lt{lenstronomy_version()}"
    return cache_dir() / "lensing" / name


def _rerun_hint(folder: Path) -> str:
    """The command that finishes `folder`, from its progress.json when there is one."""
    p = _read_json(folder / "progress.json", missing_ok=True) or {}
    p = p.get("params", {}) if isinstance(p, dict) else {}
    if not isinstance(p, dict) or not p:
        return f"re-run `visionbench data simulate-lensing --out {folder}` with its original options"
    options = " ".join(f"--{k} {p[k]}" for k in ("preset", "n", "seed", "variant", "substructure") if k in p)
    return f"re-run `visionbench data simulate-lensing {options} --out {folder}`"


def _read_json(path: Path, missing_ok: bool = False) -> Any:
    """utils.io.read_json, except that a missing file raises FileNotFoundError, or gives None (as an unreadable
    one does) when `missing_ok`."""
    if not path.is_file():
        if missing_ok:
            return None
        raise FileNotFoundError(path)
    try:
        return read_json(path)
    except UserError:
        if missing_ok:
            return None
        raise


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The meta.json of a complete simulation folder.

    Raises:
        UserError: meta.json is missing, unreadable, of another format, or the simulation is not complete.
    """
    folder = Path(folder)
    path = folder / "meta.json"
    try:
        meta = _read_json(path)
    except FileNotFoundError:
        raise UserError(f"{path}: missing, the simulation is not complete; {_rerun_hint(folder)}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f'{path}: not a simulate-lensing meta.json (expected "format": "{FORMAT}")')
    if meta.get("version") != FORMAT_VERSION:
        raise UserError(f"{path}: format version {meta.get('version')!r}, expected {FORMAT_VERSION}")
    if meta.get("complete") is not True:
        raise UserError(f"{path}: the simulation is not complete; {_rerun_hint(folder)}")
    return meta


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def simulate(
    preset: str,
    n: int,
    out: str | Path | None = None,
    seed: int = 0,
    variant: str = "regression",
    substructure: str = "axion",
    workers: int = 1,
    chunk_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Simulate `n` lensing images into `out` (default: `cache_path(...)`) and return the folder.

    A folder that already holds this complete simulation is returned at once; an unfinished one with the same
    parameters is resumed from its last written chunk.

    Args:
        preset: a key of `PRESETS` (`model_i`, `model_ii`, `model_iii`).
        n: number of images.
        out: the output folder; None means the cache.
        seed: image i is drawn from `np.random.default_rng([seed, i])`.
        variant: "regression" (target log10 m_a) or "classes" (target i % 3: none, cdm, axion).
        substructure: the substructure of every image in the regression variant (must be "axion"); ignored by
            "classes".
        workers: processes; each builds its lenstronomy model once.
        chunk_size: images rendered and written per step (and per task sent to a worker).
        progress: called as `progress(done, total)` once at the start and after every chunk written.

    Raises:
        UserError: a bad option, lenstronomy missing, or `out` holding another simulation.
    """
    params = _params(preset, n, seed, variant, substructure)
    _check_int("workers", workers, 1)
    _check_int("chunk_size", chunk_size, 1)
    version = lenstronomy_version()
    folder = Path(out).expanduser() if out is not None else cache_path(preset, n, seed, variant, substructure)
    if (folder / "meta.json").exists():
        meta = read_meta(folder)
        recorded = {k: meta.get(k) for k in params}
        if recorded != params:
            raise UserError(
                f"{folder}: holds a simulation with {_describe(recorded)}, not {_describe(params)}; "
                "choose another --out or delete the folder"
            )
        return folder

    spec = PRESETS[preset]
    shape = (params["n"], 1, spec.num_pix, spec.num_pix)
    target_dtype = np.int64 if variant == "classes" else np.float32
    done = _open_progress(folder, params)
    mode = "r+" if done else "w+"
    folder.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(folder / "images.npy", mode=mode, dtype=np.float32, shape=shape)
    targets = np.lib.format.open_memmap(folder / "targets.npy", mode=mode, dtype=target_dtype, shape=shape[:1])
    if images.shape != shape or targets.shape != shape[:1] or targets.dtype != target_dtype:
        raise UserError(f"{folder}: images.npy or targets.npy do not match progress.json; delete the folder")
    if done == 0:
        write_json(folder / "progress.json", {"params": params, "done": 0})
    if progress is not None:
        progress(done, params["n"])

    spans = [(s, min(s + chunk_size, params["n"])) for s in range(done, params["n"], chunk_size)]
    init_args = (preset, params["seed"], variant, params["substructure"])
    with _chunk_results(spans, init_args, workers) as results:
        for start, chunk_images, chunk_targets in results:
            stop = start + len(chunk_images)
            images[start:stop] = chunk_images
            targets[start:stop] = chunk_targets
            images.flush()
            targets.flush()
            write_json(folder / "progress.json", {"params": params, "done": stop})  # only after the data is on disk
            if progress is not None:
                progress(stop, params["n"])
    del images, targets  # close the memmaps before declaring the folder complete

    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        **params,
        "target": "class" if variant == "classes" else "log10_m_a",
        "lenstronomy": version,
        "pixel_scale": spec.pixel_scale,
        "image_shape": list(shape[1:]),
        "complete": True,
    }
    if variant == "classes":
        meta["class_names"] = list(CLASS_NAMES)
    write_json(folder / "meta.json", meta)
    (folder / "progress.json").unlink(missing_ok=True)
    return folder


def _open_progress(folder: Path, params: dict[str, Any]) -> int:
    """Images already on disk in an unfinished `folder` with the same parameters (0 for a fresh folder)."""
    record = _read_json(folder / "progress.json", missing_ok=True)
    arrays = [name for name in ("images.npy", "targets.npy") if (folder / name).exists()]
    if record is None:
        if arrays:
            raise UserError(f"{folder}: has {arrays[0]} but no progress.json or meta.json; choose an empty --out")
        return 0
    recorded = record.get("params") if isinstance(record, dict) else None
    if recorded != params:
        shown = _describe(recorded) if isinstance(recorded, dict) else "unknown parameters"
        raise UserError(
            f"{folder}: holds an unfinished simulation with {shown}, not {_describe(params)}; "
            "re-run with those options to finish it, or delete the folder"
        )
    done = record.get("done")
    if len(arrays) < 2 or not isinstance(done, int) or not 0 <= done <= params["n"]:
        return 0  # nothing usable on disk: start over
    if done:
        log.info("%s: resuming after %d of %d images", folder, done, params["n"])
    return done


@contextlib.contextmanager
def _chunk_results(spans: list[tuple[int, int]], init_args: tuple, workers: int):
    """An iterator of rendered chunks in order, from this process or from a spawn pool."""
    if workers == 1 or len(spans) <= 1:
        _init_worker(*init_args)
        yield map(_render_chunk, spans)
        return
    # spawn, not fork: the parent may hold torch/OpenMP threads, which do not survive a fork
    context = multiprocessing.get_context("spawn")
    with context.Pool(min(workers, len(spans)), initializer=_init_worker, initargs=init_args) as pool:
        yield pool.imap(_render_chunk, spans)
