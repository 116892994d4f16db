// Declarations only (see README.md next to this file).
#pragma once
#include "gloo/context.h"
