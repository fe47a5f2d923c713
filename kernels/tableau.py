"""Butcher tableau and continuous extension of Dormand-Prince 5(4), as data.

Coefficients from Dormand & Prince (1980), J Comput Appl Math 6:19-26, and the
dense-output matrix ``P`` from Shampine (1986), Math Comp 46:135-150, in the
form used by ``scipy.integrate.RK45``:

    k_i = f(t + C_i h, y + h * sum_j A_ij k_j)      i = 1..7 (k_7 = f(t+h, y_5): FSAL)
    y_5 = y + h * sum_j B_j k_j                      (B = A[6], fifth order)
    err = h * sum_j E_j k_j                          (difference of the 5th and 4th order)
    y(t + theta h) = y + h * sum_j k_j * sum_m P_jm theta^(m+1)       0 <= theta <= 1

``P_INTEGRAL`` is the exact integral of the interpolant's weights over the step:
``int_0^1 y(t + theta h) dtheta = y + h * sum_j k_j * P_INTEGRAL_j``.
"""
import numpy as np

N_STAGES = 7
ORDER = 5
ERROR_ORDER = 4

C = np.array([0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0])

A = np.array([
    [0, 0, 0, 0, 0, 0, 0],
    [1 / 5, 0, 0, 0, 0, 0, 0],
    [3 / 40, 9 / 40, 0, 0, 0, 0, 0],
    [44 / 45, -56 / 15, 32 / 9, 0, 0, 0, 0],
    [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0, 0, 0],
    [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656, 0, 0],
    [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0],
], dtype=np.float64)

B = A[6].copy()

E = np.array([-71 / 57600, 0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40])

P = np.array([
    [1, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
    [0, 0, 0, 0],
    [0, 131558114200 / 32700410799, -68118460800 / 10900136933, 87487479700 / 32700410799],
    [0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
    [0, 127303824393 / 49829197408, -318862633887 / 49829197408, 701980252875 / 199316789632],
    [0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
    [0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423],
], dtype=np.float64)

P_INTEGRAL = P @ (1.0 / np.arange(2, 6))
