"""gym_hil's operational-space controller, the same arithmetic with less Python per physics substep.

gym_hil's `FrankaGymEnv.apply_action` calls `gym_hil.controllers.opspace` once per physics substep (50 per env
step). That function rebuilds its gain arrays, allocates its Jacobian and inertia buffers and goes through
numpy scalars for the quaternion maths on every call, and costs more CPU than `mujoco.mj_step` itself; it is most of
a state-only PickCube step (9.6 ms on one core here; 5.2 ms with `FastOpspace`, `bench/bench_env.py`).

`FastOpspace` does the same floating-point operations in the same order: gains are computed once (with the same
expressions), buffers are reused, the Jacobian is gathered once instead of concatenated, the 7x7 inverse and
determinant call numpy's LAPACK gufuncs directly (what `np.linalg.inv`/`det` call, without their per-call checks),
and the scalar quaternion maths runs on Python floats (IEEE doubles, as numpy scalars are). Trajectories are
bit-identical to gym_hil's (tested on whole episodes, `tests/test_envs.py`).
`install_fast_opspace(env)` swaps it into one gym_hil env; `PickCubeStateEnvConfig.fast_controller=false` keeps
gym_hil's own controller.
"""

from __future__ import annotations

import math

import numpy as np

# gym_hil's `opspace` defaults, as `FrankaGymEnv.apply_action` uses them.
POS_GAINS = (200.0, 200.0, 200.0)
ORI_GAINS = (200.0, 200.0, 200.0)
DAMPING_RATIO = 1.0
NULLSPACE_STIFFNESS = 0.5
SINGULAR_DET = 1e-2


def _mat_to_quat(m: list[float]) -> tuple[float, float, float, float]:
    """gym_hil's `mat_to_quat` on a row-major 3x3 matrix given as 9 floats."""
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m
    trace = m00 + m11 + m22
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        return 0.25 * s, (m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s
    if m00 > m11 and m00 > m22:
        s = 2.0 * math.sqrt(1.0 + m00 - m11 - m22)
        return (m21 - m12) / s, 0.25 * s, (m01 + m10) / s, (m02 + m20) / s
    if m11 > m22:
        s = 2.0 * math.sqrt(1.0 + m11 - m00 - m22)
        return (m02 - m20) / s, (m01 + m10) / s, 0.25 * s, (m12 + m21) / s
    s = 2.0 * math.sqrt(1.0 + m22 - m00 - m11)
    return (m10 - m01) / s, (m02 + m20) / s, (m12 + m21) / s, 0.25 * s


def _orientation_error(quat: tuple, quat_des: tuple) -> tuple[float, float, float]:
    """gym_hil's `quat_to_axisangle(quat_diff_active(source=quat_des, target=quat))`."""
    w1, x1, y1, z1 = quat
    w2, x2, y2, z2 = quat_des[0], -quat_des[1], -quat_des[2], -quat_des[3]
    w = w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2
    x = w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2
    y = w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2
    z = w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2
    norm = math.sqrt(w * w + x * x + y * y + z * z)
    if norm < 1e-10:
        return 0.0, 0.0, 0.0
    w /= norm
    x /= norm
    y /= norm
    z /= norm
    # numpy's arccos, not math.acos: the two libm paths are not guaranteed to round alike.
    angle = 2.0 * float(np.arccos(min(max(w, -1.0), 1.0)))
    sin_half_angle = math.sqrt(1.0 - w * w)
    if sin_half_angle < 1e-10:
        return angle * x, angle * y, angle * z
    return angle * (x / sin_half_angle), angle * (y / sin_half_angle), angle * (z / sin_half_angle)


def _index(ids: np.ndarray) -> slice | np.ndarray:
    """A slice when `ids` are consecutive (a view instead of a fancy-index copy: same values), else `ids`."""
    ids = np.asarray(ids)
    if ids.ndim == 1 and len(ids) > 0 and np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
        return slice(int(ids[0]), int(ids[0]) + len(ids))
    return ids


def _linalg_kernels():
    """`np.linalg.inv` / `det` without their per-call wrapping (dtype checks, an `errstate` context), when numpy
    exposes the gufuncs both call: the same LAPACK routine on the same input, so the same bits. Falls back to the
    public functions on a numpy without them."""
    try:
        from numpy.linalg import _umath_linalg

        inv, det = _umath_linalg.inv, _umath_linalg.det
        return (lambda a: inv(a, signature="d->d")), (lambda a: det(a, signature="d->d"))
    except (ImportError, AttributeError):  # pragma: no cover - other numpy layouts
        return np.linalg.inv, np.linalg.det


class FastOpspace:
    """gym_hil's `opspace(model, data, site_id, dof_ids, pos, ori(quat), joint, gravity_comp=True)`, default gains."""

    def __init__(self, model, site_id: int, dof_ids: np.ndarray):
        import mujoco

        # Bound once: `__call__` runs 50 times per env step.
        self._mj_jac_site, self._mj_full_m = mujoco.mj_jacSite, mujoco.mj_fullM
        self._inv, self._det = _linalg_kernels()
        self.model = model
        self.site_id = int(site_id)
        self.dof_ids = np.asarray(dof_ids)
        self.dof = _index(self.dof_ids)
        n = len(self.dof_ids)
        # The same expressions gym_hil evaluates per call, once.
        kp = np.asarray(POS_GAINS)
        self.neg_kp_pos, self.neg_kd_pos = -kp, -(DAMPING_RATIO * 2 * np.sqrt(kp))
        kp = np.asarray(ORI_GAINS)
        self.neg_kp_ori, self.neg_kd_ori = -kp, -(DAMPING_RATIO * 2 * np.sqrt(kp))
        kp_joint = np.full((n,), NULLSPACE_STIFFNESS)
        self.neg_kp_joint, self.neg_kd_joint = -kp_joint, -(DAMPING_RATIO * 2 * np.sqrt(kp_joint))
        self.eye = np.eye(n)
        # mj_jacSite writes the translational (0-2) and rotational (3-5) rows of one buffer, so gym_hil's
        # `concatenate([jac_v, jac_w])` is a single gather.
        self.jac_full = np.zeros((6, model.nv), dtype=np.float64)
        self.jac_v_full, self.jac_w_full = self.jac_full[:3], self.jac_full[3:]
        self.full_m = np.zeros((model.nv, model.nv), dtype=np.float64)
        self.ix = np.ix_(self.dof_ids, self.dof_ids)
        self.task_error = np.empty(6, dtype=np.float64)

    def __call__(self, data, pos: np.ndarray, quat_des: np.ndarray, q_des: np.ndarray) -> np.ndarray:
        dof, site = self.dof, self.site_id
        q = data.qpos[dof]
        dq = data.qvel[dof]

        self._mj_jac_site(self.model, data, self.jac_v_full, self.jac_w_full, site)
        # gym_hil's concatenated Jacobian as one gather. The PD terms use their own copies of the row blocks, as
        # gym_hil's do: BLAS may sum a matrix-vector product in another order for a view into a larger array
        # (measured: `jac[:3] @ dq` differs from `jac_v @ dq` in the last bit), and the physics must not.
        jac = self.jac_full[:, self.dof_ids]
        jac_v, jac_w = self.jac_v_full[:, self.dof_ids], self.jac_w_full[:, self.dof_ids]
        jac_t = jac.T

        # Position PD, into the first half of the task-space error.
        err = self.task_error
        err[:3] = (data.site_xpos[site] - pos) * self.neg_kp_pos + (jac_v @ dq) * self.neg_kd_pos

        # Orientation PD.
        quat = _mat_to_quat(data.site_xmat[site].tolist())
        # The sign test stays a numpy dot, as gym_hil's (its summation order could differ from Python's).
        if np.array(quat) @ quat_des < 0.0:
            quat = (-quat[0], -quat[1], -quat[2], -quat[3])
        ori_error = np.array(_orientation_error(quat, quat_des.tolist()))
        err[3:] = ori_error * self.neg_kp_ori + (jac_w @ dq) * self.neg_kd_ori

        # Inertia in joint space and task space.
        self._mj_full_m(self.model, self.full_m, data.qM)
        m_inv = self._inv(self.full_m[self.ix])
        mx_inv = jac @ m_inv @ jac_t
        if abs(self._det(mx_inv)) >= SINGULAR_DET:
            mx = self._inv(mx_inv)
        else:
            mx = np.linalg.pinv(mx_inv, rcond=SINGULAR_DET)

        tau = jac_t @ mx @ err
        # Joint task in the nullspace.
        ddq = (q - q_des) * self.neg_kp_joint + dq * self.neg_kd_joint
        jnull = m_inv @ jac_t @ mx
        tau += (self.eye - jac_t @ jnull.T) @ ddq
        tau += data.qfrc_bias[dof]
        return tau


# The gym_hil internals `install_fast_opspace` reads (checked against gym_hil 0.1.14).
_REQUIRED_ATTRS = (
    "_model", "_data", "_pinch_site_id", "_panda_dof_ids", "_panda_ctrl_ids", "_gripper_ctrl_id",
    "_cartesian_bounds", "_home_position", "_n_substeps",
)


def install_fast_opspace(base_env) -> bool:
    """Replace `apply_action` on one gym_hil `FrankaGymEnv` (the unwrapped env) with the `FastOpspace` loop.

    Returns False, leaving the env untouched, when the env's `apply_action` is not gym_hil's `FrankaGymEnv` one
    (a subclass overrides it) or the internals it mirrors are missing (another gym_hil version).
    """
    import mujoco
    from gym_hil.mujoco_gym_env import MAX_GRIPPER_COMMAND, FrankaGymEnv

    if getattr(type(base_env), "apply_action", None) is not FrankaGymEnv.apply_action:
        return False
    if not all(hasattr(base_env, a) for a in _REQUIRED_ATTRS):
        return False

    ctrl = FastOpspace(base_env._model, base_env._pinch_site_id, base_env._panda_dof_ids)
    model, data = base_env._model, base_env._data
    arm_ctrl, gripper_id = _index(base_env._panda_ctrl_ids), base_env._gripper_ctrl_id
    lower, upper = base_env._cartesian_bounds
    home = np.asarray(base_env._home_position)
    n_substeps = base_env._n_substeps

    def apply_action(action):
        x, y, z, rx, ry, rz, grasp_command = action
        pos = data.mocap_pos[0].copy()
        data.mocap_pos[0] = np.clip(pos + np.asarray([x, y, z]), lower, upper)
        g = data.ctrl[gripper_id] / MAX_GRIPPER_COMMAND
        data.ctrl[gripper_id] = np.clip(g + grasp_command, 0.0, 1.0) * MAX_GRIPPER_COMMAND
        target_pos, target_quat = data.mocap_pos[0], data.mocap_quat[0]
        for _ in range(n_substeps):
            data.ctrl[arm_ctrl] = ctrl(data, target_pos, target_quat, home)
            mujoco.mj_step(model, data)

    base_env.apply_action = apply_action
    return True
