// Every page: forms marked data-confirm (removing a user, revoking a token) ask first.

import { confirmForms } from "./confirm.js";

confirmForms();
