T1: Search for X
- Dependencies: none
T2: Compare
- Dependencies: T1
