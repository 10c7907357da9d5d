"""Procedural 3D scenes (simple shapes on a ground plane): objects, camera, scene graph, random scenes and
animated sequences of scenes. Rendering them (open3d ray casting on the CPU) is `mmrl.scene_render`.

Conventions (every function here follows them):

* World frame: metres, right-handed, z up. The ground is the plane z = 0; every object rests on it,
  so `SceneObject.position` is the centre of the object's bounding box (z = half its height).
* Camera frame: OpenCV pinhole, x right, y down, z forward. `Camera.pose` is camera-to-world.
* Pixels: integer image coordinates are pixel centres (OpenCV), so pixel `[v, u]` is hit by the
  ray through (u, v) and `np.rint(camera.project(p)[0])` is the pixel index (column, row).
* Depth: z of the surface point in the camera frame, in metres (the ScanNet/NYU depth-map
  convention, not the distance along the ray); 0 where a ray hits nothing (sky).
* Boxes: `(x0, y0, x1, y1)` in pixels, x1/y1 exclusive, so `mask[y0:y1, x0:x1]` crops it.
* Randomness: only through an explicit `numpy.random.Generator`; the same seed gives
  byte-identical arrays and JSON. Nothing mutates its input: scenes are frozen dataclasses.

Edits of scenes live in `mmrl.scene_edits`; rendering user meshes and point clouds with a `Camera` in
`mmrl.geometry_render`. Those and `mmrl.scene_render` follow the conventions above.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

SHAPES: tuple[str, ...] = ("cube", "sphere", "cylinder", "cone", "torus")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (40, 85, 225),
    "yellow": (240, 205, 30),
    "purple": (135, 60, 185),
    "cyan": (40, 200, 215),
    "orange": (245, 130, 25),
    "white": (240, 240, 240),
}
SIZES: dict[str, float] = {"small": 0.35, "medium": 0.55, "large": 0.8}
"""Edge (cube), diameter (sphere, cylinder, cone base, torus outer) in metres; also the height, except
the torus, which lies flat and is `2 * _TUBE * size` high."""

_TUBE = 0.15  # torus tube radius as a fraction of its outer diameter
_GAP = 0.08  # metres of clearance kept between object footprints, so no two objects touch


# --------------------------------------------------------------------------------------------------
# Scene description


@dataclass(frozen=True)
class SceneObject:
    id: int
    shape: str
    color: str
    size: str
    position: tuple[float, float, float]
    """World centre of the bounding box (m); z is half the height because objects rest on the ground."""
    yaw: float = 0.0
    """Rotation about the world z axis (radians); visible only on cubes."""

    def __post_init__(self) -> None:
        for name, value, vocab in (
            ("shape", self.shape, SHAPES),
            ("color", self.color, COLORS),
            ("size", self.size, SIZES),
        ):
            if value not in vocab:
                raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(vocab)}")

    @property
    def metres(self) -> float:
        return SIZES[self.size]

    def describe(self) -> str:
        """E.g. "small red cube"."""
        return f"{self.size} {self.color} {self.shape}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "shape": self.shape,
            "color": {"name": self.color, "rgb": list(COLORS[self.color])},
            "size": {"name": self.size, "metres": self.metres},
            "position": list(self.position),
            "yaw": self.yaw,
        }


def place_object(id: int, shape: str, color: str, size: str, xy: Sequence[float], yaw: float = 0.0) -> SceneObject:
    """A SceneObject standing on the ground at ground point `xy` (its z is derived from shape and size)."""
    z = _height(shape, SIZES[size]) / 2 if size in SIZES else 0.0
    return SceneObject(int(id), shape, color, size, (float(xy[0]), float(xy[1]), float(z)), float(yaw))


def _height(shape: str, s: float) -> float:
    return 2 * _TUBE * s if shape == "torus" else s


def _footprint(obj: SceneObject) -> float:
    """Radius of a circle on the ground that contains the object whatever its yaw."""
    return obj.metres * (math.sqrt(0.5) if obj.shape == "cube" else 0.5)


def _bound_radius(obj: SceneObject) -> float:
    """Radius of a sphere about `position` containing the object (bounds |depth - centre z|)."""
    return obj.metres * {"cube": math.sqrt(0.75), "sphere": 0.5, "torus": 0.5}.get(obj.shape, math.sqrt(0.5))


@dataclass(frozen=True)
class Camera:
    """Pinhole camera. `pose` is the 4x4 camera-to-world matrix as nested tuples (row-major), hashable
    and JSON-able; camera axes are OpenCV (x right, y down, z forward); f, c in pixels."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    pose: tuple[tuple[float, ...], ...]

    @classmethod
    def look_at(
        cls,
        eye: Sequence[float],
        target: Sequence[float],
        width: int = 320,
        height: int = 240,
        fov_deg: float = 55.0,
        up: Sequence[float] = (0.0, 0.0, 1.0),
    ) -> Camera:
        """Camera at `eye` looking at `target`; `fov_deg` is the horizontal field of view, square pixels."""
        eye_, z = np.asarray(eye, float), np.asarray(target, float) - np.asarray(eye, float)
        x = np.cross(z, np.asarray(up, float))
        if np.linalg.norm(z) < 1e-9 or np.linalg.norm(x) < 1e-9 * np.linalg.norm(z):
            raise ValueError(f"look_at: eye {tuple(eye)} coincides with target or looks along up {tuple(up)}")
        z, x = z / np.linalg.norm(z), x / np.linalg.norm(x)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([x, np.cross(z, x), z], axis=1)  # columns: camera axes in world
        pose[:3, 3] = eye_
        f = (width / 2) / math.tan(math.radians(fov_deg) / 2)
        return cls(int(width), int(height), f, f, (width - 1) / 2, (height - 1) / 2, _as_pose(pose))

    @property
    def matrix(self) -> np.ndarray:
        """Camera-to-world 4x4 (float64)."""
        return np.array(self.pose, dtype=np.float64)

    @property
    def intrinsics(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)

    def world_to_camera(self, points: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """(N, 3) world points -> (N, 3) camera-frame points (z = depth)."""
        m = self.matrix
        return (np.asarray(points, np.float64).reshape(-1, 3) - m[:3, 3]) @ m[:3, :3]

    def project(self, points_world: np.ndarray | Sequence[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
        """(N, 2) pixel coordinates (u right, v down) and (N,) camera z; points behind have z <= 0."""
        p = self.world_to_camera(points_world)
        z = p[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = np.stack([self.fx * p[:, 0] / z + self.cx, self.fy * p[:, 1] / z + self.cy], axis=1)
        return uv, z

    def scaled(self, factor: float) -> Camera:
        """The same view at `factor` times the resolution (pixel centres stay at integer coordinates)."""
        w, h = max(1, round(self.width * factor)), max(1, round(self.height * factor))
        sx, sy = w / self.width, h / self.height
        return Camera(
            w, h, self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, self.pose
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "pose": [list(r) for r in self.pose],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Camera:
        return cls(
            int(d["width"]),
            int(d["height"]),
            float(d["fx"]),
            float(d["fy"]),
            float(d["cx"]),
            float(d["cy"]),
            _as_pose(np.asarray(d["pose"], np.float64)),
        )


look_at_camera = Camera.look_at


def _as_pose(m: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(m).reshape(4, 4))


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    camera: Camera
    light_dir: tuple[float, float, float] = (0.35, -0.45, 0.82)
    """World direction from the scene towards the (distant, directional) light; normalised when rendering."""
    ground_color: tuple[int, int, int] = (150, 138, 120)
    background_color: tuple[int, int, int] = (185, 205, 230)

    def object(self, object_id: int) -> SceneObject:
        for o in self.objects:
            if o.id == object_id:
                return o
        raise ValueError(f"no object with id {object_id}; ids are {[o.id for o in self.objects]}")

    def to_graph(self) -> dict[str, Any]:
        """JSON-serialisable scene graph; `Scene.from_graph` inverts it exactly."""
        cam_pos = self.camera.world_to_camera([o.position for o in self.objects]) if self.objects else []
        objects = [{**o.to_dict(), "camera_position": [float(v) for v in c]} for o, c in zip(self.objects, cam_pos)]
        return {
            "objects": objects,
            "camera": self.camera.to_dict(),
            "light_dir": list(self.light_dir),
            "ground_color": list(self.ground_color),
            "background_color": list(self.background_color),
        }

    @classmethod
    def from_graph(cls, graph: dict[str, Any]) -> Scene:
        def name(v: Any) -> str:
            return v["name"] if isinstance(v, dict) else v

        objects = tuple(
            SceneObject(
                int(o["id"]),
                o["shape"],
                name(o["color"]),
                name(o["size"]),
                tuple(float(v) for v in o["position"]),
                float(o.get("yaw", 0.0)),
            )
            for o in graph["objects"]
        )
        return cls(
            objects,
            Camera.from_dict(graph["camera"]),
            tuple(float(v) for v in graph["light_dir"]),
            tuple(int(v) for v in graph["ground_color"]),
            tuple(int(v) for v in graph["background_color"]),
        )


# --------------------------------------------------------------------------------------------------
# Random scenes


def random_scene(
    rng: np.random.Generator,
    *,
    n_objects: int | tuple[int, int] = (3, 10),
    width: int = 320,
    height: int = 240,
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = tuple(COLORS),
    sizes: Sequence[str] = tuple(SIZES),
    fov_deg: float = 55.0,
    elevation_deg: tuple[float, float] = (25.0, 55.0),
    unique: bool = True,
    min_visible: float = 0.25,
    margin: float = 0.06,
    max_tries: int = 300,
) -> Scene:
    """Objects at non-overlapping ground positions whose centres project inside the image (`margin` is a
    fraction of width/height) and which are at least `min_visible` unoccluded; camera on a random orbit
    (azimuth, elevation, distance jitter) looking at the scene centre; random light direction.

    `unique` makes every (size, color, shape) distinct so "the small red cube" names one object.
    Raises ValueError when the objects cannot be placed within `max_tries` samples each.
    """
    from mmrl.scene_render import visible_fractions  # it imports this module (and open3d)

    lo, hi = (n_objects, n_objects) if isinstance(n_objects, int) else n_objects
    n = int(rng.integers(lo, hi + 1))
    combos = list(itertools.product(sizes, colors, shapes))
    if n < 0 or (unique and n > len(combos)):
        raise ValueError(f"n_objects={n_objects} cannot be met with {len(combos)} distinct attribute combinations")
    extent = 1.0 + 0.16 * n  # half side of the square the objects are scattered in: grows with the crowd
    az, el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(*elevation_deg))
    dist = extent * rng.uniform(2.2, 2.6)
    eye = (dist * math.cos(el) * math.cos(az), dist * math.cos(el) * math.sin(az), dist * math.sin(el))
    camera = Camera.look_at(eye, (0.0, 0.0, 0.2), width, height, fov_deg)
    laz, lel = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(40, 70))
    light = (math.cos(lel) * math.cos(laz), math.cos(lel) * math.sin(laz), math.sin(lel))
    picks = rng.choice(len(combos), size=n, replace=not unique) if n else []
    objects: list[SceneObject] = []
    for i, k in enumerate(picks):
        size, color, shape = combos[int(k)]
        objects.append(
            _sample_placement(
                rng, objects, place_object(i, shape, color, size, (0, 0)), camera, extent, margin, max_tries
            )
        )
    scene = Scene(tuple(objects), camera, light)
    for _ in range(30):  # re-place hidden objects until each is visible enough
        vis = visible_fractions(scene)
        bad = [o for o in scene.objects if vis[o.id] < min_visible]
        if not bad:
            return scene
        others = [o for o in scene.objects if o.id != bad[0].id]
        moved = _sample_placement(rng, others, bad[0], camera, extent, margin, max_tries)
        scene = replace(scene, objects=tuple(moved if o.id == moved.id else o for o in scene.objects))
    raise ValueError(f"could not make all {n} objects at least {min_visible:.0%} visible; use fewer objects")


def in_view(camera: Camera, obj: SceneObject, margin: float) -> bool:
    """The projected centre lies inside the image shrunk by `margin` (fraction of width/height) plus half
    the object's projected radius, so most of the object is in the picture."""
    uv, z = camera.project([obj.position])
    if not z[0] > 0.1:
        return False
    r = 0.5 * camera.fx * _bound_radius(obj) / z[0]
    mx, my = margin * camera.width + r, margin * camera.height + r
    return bool(mx <= uv[0, 0] <= camera.width - 1 - mx and my <= uv[0, 1] <= camera.height - 1 - my)


def overlapping(objects: Sequence[SceneObject], obj: SceneObject) -> SceneObject | None:
    """The first object (other than `obj` itself) whose footprint comes closer than _GAP to `obj`'s."""
    for o in objects:
        d = math.hypot(o.position[0] - obj.position[0], o.position[1] - obj.position[1])
        if o.id != obj.id and d < _footprint(o) + _footprint(obj) + _GAP:
            return o
    return None


def _sample_placement(
    rng: np.random.Generator,
    objects: Sequence[SceneObject],
    obj: SceneObject,
    camera: Camera,
    extent: float,
    margin: float,
    max_tries: int,
) -> SceneObject:
    """`obj` at a random free, in-view ground position with a random yaw (rejection sampling)."""
    for _ in range(max_tries):
        x, y = rng.uniform(-extent, extent, size=2)
        cand = place_object(obj.id, obj.shape, obj.color, obj.size, (x, y), rng.uniform(0, 2 * math.pi))
        if in_view(camera, cand, margin) and overlapping(objects, cand) is None:
            return cand
    raise ValueError(
        f"could not place a {obj.describe()} without overlap in {max_tries} tries; use fewer or smaller objects"
    )


# --------------------------------------------------------------------------------------------------
# Animation: sequences of scenes for synthetic videos


def animate(
    scene: Scene,
    rng: np.random.Generator,
    n_frames: int,
    *,
    n_moving: int | tuple[int, int] = (1, 3),
    distance: tuple[float, float] = (0.6, 1.6),
    orbit_deg: float = 0.0,
    easing: str = "friction",
    margin: float = 0.02,
    max_tries: int = 50,
) -> list[Scene]:
    """`n_frames` scenes (frame 0 is `scene`) in which `n_moving` objects slide along straight lines and the
    camera orbits the look-at point by `orbit_deg` in total.

    easing "friction": each mover starts fast and decelerates to a stop (s = 1 - (1 - tau)^2), which
    gives the clip a direction in time (played backwards, objects would speed up for no reason);
    "linear": constant speed. Paths keep movers off all other objects, in every frame, and their centres
    in view; a mover for which no such path is found in `max_tries` tries stays still.
    """
    if n_frames < 1 or easing not in ("friction", "linear"):
        raise ValueError(f"animate: need n_frames >= 1 (got {n_frames}) and easing 'friction' or 'linear'")
    taus = np.linspace(0.0, 1.0, n_frames) if n_frames > 1 else np.zeros(1)
    s = 1 - (1 - taus) ** 2 if easing == "friction" else taus
    cameras = [_orbit(scene.camera, math.radians(orbit_deg) * float(tau)) for tau in taus]
    lo, hi = (n_moving, n_moving) if isinstance(n_moving, int) else n_moving
    k = min(int(rng.integers(lo, hi + 1)), len(scene.objects))
    movers = {int(i) for i in rng.choice(len(scene.objects), size=k, replace=False)} if k else set()
    # tracks[i][f] is object i in frame f; static objects are the same in every frame
    tracks = [[o] * n_frames for o in scene.objects]
    for i in sorted(movers):
        o = scene.objects[i]
        for _ in range(max_tries):
            ang, dist = rng.uniform(0, 2 * math.pi), rng.uniform(*distance)
            step = np.array([math.cos(ang), math.sin(ang)]) * dist
            path = [place_object(o.id, o.shape, o.color, o.size, np.add(o.position[:2], f * step), o.yaw) for f in s]
            if all(
                in_view(cam, p, margin) and overlapping([t[f] for j, t in enumerate(tracks) if j != i], p) is None
                for f, (cam, p) in enumerate(zip(cameras, path))
            ):
                tracks[i] = path
                break
    return [replace(scene, objects=tuple(t[f] for t in tracks), camera=cameras[f]) for f in range(n_frames)]


def _orbit(camera: Camera, angle: float) -> Camera:
    """The camera rotated by `angle` (radians) about the vertical axis through the ground point it looks at."""
    if angle == 0.0:
        return camera
    m = camera.matrix
    eye, axis = m[:3, 3], m[:3, 2]
    pivot = eye - axis * (eye[2] / axis[2]) if axis[2] < -1e-6 else np.zeros(3)  # optical axis meets z = 0
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    new = np.eye(4)
    new[:3, :3] = rot @ m[:3, :3]
    new[:3, 3] = rot @ (eye - pivot) + pivot
    return replace(camera, pose=_as_pose(new))
